"""Head-node fault tolerance, proven: the tier's release runs with `ray.gcsFaultTolerance` on (a
Debian redis-server host beside the cluster, its address and password in a Secret). The Ray head
host is killed (every process, and its network) under a load of predictions through the web
app's /serve/; KubeRay's RayCluster controller recreates the head Pod (same RayCluster, so the
same Redis storage namespace); the new head recovers the cluster's state from Redis and the
Serve applications come back RUNNING with no redeploy: the serve config is never sent again,
which is what the RayService controller does when it finds the applications there
(rayservice_controller.go checkIfNeedSubmitServeApplications, KubeRay v1.7.0). Few predictions
fail, none waits past the web app's timeout, and all succeed once the applications are back; the
failures, the answers while the head was down and the longest gap between answered predictions
are measured and printed.

Runs last (it replaces the head of the shared cluster).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import kuberay
import scenarios
from conftest import REDIS_HOST, REDIS_PASSWORD, REDIS_PORT
from render import REPO, container_port

from marcelle_torch.files import atomic_write_text

# The docs render the figures from here (docs/gen/figures.py head_loss).
FIGURES = REPO / "bench" / "out" / "reliability" / "head_loss.json"

REQUEST_TIMEOUT_S = 130  # the web app's proxy_read_timeout for /serve/
CLIENTS = 4


def redis_keys(cluster) -> list[str]:
    (ip,) = cluster.dns.lookup(f"{REDIS_HOST}.{cluster.namespace}.svc.{cluster.domain}")
    out = subprocess.run(
        ["redis-cli", "-h", ip, "-p", str(REDIS_PORT), "--no-auth-warning", "-a", REDIS_PASSWORD, "--scan"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def longest_gap(results, start: float, end: float) -> tuple[float, float]:
    """The longest time in [start, end] with no prediction answered 200, and when it began."""
    answered = sorted(t1 for _, t1, status, *_ in results if status == 200 and start <= t1 <= end)
    marks = [start, *answered, end]
    return max((b - a, a) for a, b in zip(marks, marks[1:], strict=False))


def is_json_503(status, headers, body) -> bool:
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    retry = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    return status == 503 and isinstance(payload, dict) and "error" in payload and bool(retry)


def test_head_loss_under_load_recovers_from_redis(cluster, target, make_digit):
    namespace = kuberay.storage_namespace(cluster.ray_cluster)
    keys = redis_keys(cluster)
    assert any(namespace in k for k in keys), f"no key of storage namespace {namespace} in Redis: {keys[:10]}"
    before_apps = kuberay.get_and_check_serve_status(cluster.dashboard, token=cluster.ray_token)[1]
    instance, _ = make_digit(0)
    url = f"{target.serve}/v1/models/digits:predict"
    results: list[tuple] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status, headers, body = scenarios.http(
                    "POST", url, {"instances": [instance]}, timeout=REQUEST_TIMEOUT_S
                )
            except OSError as exc:  # no answer at all
                status, headers, body = 0, {}, repr(exc).encode()
            results.append((t0, time.monotonic(), status, headers, body))
            if status != 200:
                time.sleep(0.2)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(8)
    assert any(r[2] == 200 for r in results), f"no prediction succeeded before the kill: {results[-3:]}"

    old = cluster.head
    killed_at = time.monotonic()
    old.delete()  # the head host is gone: its processes and its network
    print(f"killed the head {old.name} ({old.ip})")
    # The RayCluster controller sees no head Pod and creates one (same RayCluster).
    new = cluster.start_ray_pod("head", None)
    cluster.wait_ready([new], 600)
    head_ready_at = time.monotonic()
    dashboard = f"http://{new.ip}:{container_port(new.spec['containers'][0], 'dashboard')}"
    cluster.dashboard = dashboard
    # The RayService controller polls the Serve applications; they come back from the GCS's
    # state in Redis, so it finds them and sends nothing.
    apps, ready, deadline = {}, False, time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            ready, apps = kuberay.get_and_check_serve_status(dashboard, token=cluster.ray_token)
        except OSError:
            ready, apps = False, {}
        if apps:
            need, why = kuberay.check_if_need_submit_serve_applications(
                cluster.serve_config, cluster.serve_config, apps
            )
            assert not need, f"the RayService controller would redeploy: {why}"
        if ready:
            break
        time.sleep(2)
    apps_running_at = time.monotonic()
    time.sleep(20)  # predictions under the recovered head
    stop.set()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S + 10)
    end = time.monotonic()

    after = [r for r in results if r[1] >= killed_at]
    failed = [r for r in after if r[2] != 200]
    statuses: dict = {}
    for r in failed:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    during_outage = [r for r in after if r[2] == 200 and r[1] <= head_ready_at]
    gap, gap_start = longest_gap(results, killed_at, end)
    figures = {
        "clients": CLIENTS,
        "requests_after_kill": len(after),
        "failed": len(failed),
        "failed_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answered_while_head_down": len(during_outage),
        "failed_as_json_503_with_retry_after": sum(is_json_503(*r[2:]) for r in failed),
        "longest_gap_s": round(gap, 2),
        "longest_gap_began_after_kill_s": round(gap_start - killed_at, 2),
        "head_ready_after_s": round(head_ready_at - killed_at, 1),
        "apps_running_after_s": round(apps_running_at - killed_at, 1),
        "slowest_request_s": round(max((r[1] - r[0] for r in after), default=0), 2),
    }
    print("head loss:", json.dumps(figures))
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    dated = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), **figures}
    atomic_write_text(FIGURES, json.dumps(dated, indent=2) + "\n")
    assert ready, f"the Serve applications did not come back RUNNING: {apps}"
    assert set(apps) == set(before_apps), f"applications before {sorted(before_apps)}, after {sorted(apps)}"
    # Not asserted: predictions answered while the head is down. Measured here (Ray 2.60.0), the
    # worker's Serve answers nothing new until the new head's Serve controller is back: requests
    # that were passing through the lost head's proxy hold their replica until Ray gives them up
    # (ActorUnavailableError, then a 500), and the others wait. `answered_while_head_down` and
    # the longest gap are the figures the docs show.
    # Every request got an answer within the web app's timeout, and few failed.
    assert figures["slowest_request_s"] < REQUEST_TIMEOUT_S, figures
    assert len(failed) <= 0.05 * len(after), f"more than 5% of the predictions failed: {figures}"
    tail = [r for r in results if r[0] >= apps_running_at]
    assert tail and all(r[2] == 200 for r in tail), f"predictions fail after the recovery: {figures}"
