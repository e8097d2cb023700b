"""The kind demo's scripts, checked where there is no Docker or kind: every shell script parses
(`bash -n`), and `k8s/kind-demo.sh --dry-run` prints the commands a kind user's machine would run,
in order: the cluster from k8s/kind-config.yaml, a docker build of each CPU image (weights
first), a `kind load` of each deployed image, the pinned KubeRay operator, the chart with the
kind value set, a wait on the RayService, and the port-forward of the web app."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    {*REPO.glob("k8s/*.sh"), *REPO.glob("tests/**/*.sh"), REPO / "tests/chart/install-tools.sh"}
    - {*REPO.glob("tests/chart/node_modules/**/*.sh")}
)
DEPLOYED = {
    "ray": "services/ray/Dockerfile",
    "worker": "services/worker/Dockerfile",
    "backend": "services/backend/Dockerfile",
    "webapp": "services/frontend/Dockerfile",
}


def versions() -> dict[str, str]:
    lines = (REPO / "operator-config" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, f"{script.relative_to(REPO)}: {result.stderr}"


def dry_run(*args: str, **env: str) -> list[list[str]]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CLUSTER", "NAMESPACE", "RELEASE", "IMAGE_TAG", "REGISTRY", "SKIP_BUILD", "WAIT_TIMEOUT", "PORT")
    }
    # No docker, kind, helm or kubectl are needed to print the plan: hide them.
    environ.update(PATH="/usr/bin:/bin", **env)
    result = subprocess.run(
        [str(REPO / "k8s" / "kind-demo.sh"), *args], capture_output=True, text=True, env=environ, timeout=60
    )
    assert result.returncode == 0, f"dry run failed: {result.stderr}"
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def name(cmd: list[str]) -> str:
    return Path(cmd[0]).name


def index(plan: list[list[str]], predicate, what: str) -> int:
    found = [i for i, cmd in enumerate(plan) if predicate(cmd)]
    assert found, f"the dry run never {what}:\n" + "\n".join(" ".join(c) for c in plan)
    return found[0]


def test_dry_run_prints_the_whole_plan_in_order():
    plan = dry_run("--dry-run")
    pins = versions()
    create = index(plan, lambda c: c[:3] == ["kind", "create", "cluster"], "creates the kind cluster")
    assert plan[create][plan[create].index("--config") + 1] == str(REPO / "k8s" / "kind-config.yaml")
    assert plan[create][plan[create].index("--name") + 1] == "marcelle-torch"

    builds = [c for c in plan if c[:2] == ["docker", "build"]]
    dockerfiles = [c[c.index("-f") + 1] for c in builds]
    assert dockerfiles[0] == str(REPO / "services/weights/Dockerfile"), "the weights image is built first"
    assert sorted(dockerfiles[1:]) == sorted(str(REPO / p) for p in DEPLOYED.values())
    assert not any("--build-arg" in c and "VARIANT=gpu" in c for c in builds), "kind builds CPU images only"
    for cmd in builds:
        assert cmd[-1] == str(REPO), "every image builds from the repository root"
        if not any(part in cmd[cmd.index("-f") + 1] for part in ("backend", "weights")):
            assert "WEIGHTS_IMAGE=marcelle-torch/weights:0.1.0" in cmd, cmd

    loads = [c for c in plan if c[:3] == ["kind", "load", "docker-image"]]
    assert sorted(c[3] for c in loads) == sorted(f"marcelle-torch/{c}:0.1.0" for c in DEPLOYED)
    assert all(c[c.index("--name") + 1] == "marcelle-torch" for c in loads)
    last_build = max(i for i, c in enumerate(plan) if c[:2] == ["docker", "build"])
    first_load = index(plan, lambda c: c[:3] == ["kind", "load", "docker-image"], "loads an image")
    assert create < last_build < first_load

    operator = index(plan, lambda c: name(c) == "helm" and "kuberay-operator" in c[:4], "installs KubeRay")
    cmd = plan[operator]
    assert cmd[cmd.index("--version") + 1] == pins["KUBERAY_OPERATOR_CHART_VERSION"]
    assert cmd[cmd.index("--repo") + 1] == pins["KUBERAY_HELM_REPO"]
    assert str(REPO / "operator-config" / "kuberay-operator-values.yaml") in cmd
    assert "--wait" in cmd and "--timeout" in cmd

    chart = index(
        plan, lambda c: name(c) == "helm" and str(REPO / "charts" / "marcelle-torch") in c, "installs the chart"
    )
    cmd = plan[chart]
    assert str(REPO / "tests" / "e2e" / "kind-values.yaml") in cmd
    sets = {cmd[i + 1] for i, word in enumerate(cmd) if word == "--set"}
    for component in DEPLOYED:
        assert (
            f"{component}.image.tag=0.1.0" in sets
            and f"{component}.image.repository=marcelle-torch/{component}" in sets
        )
    assert first_load < operator < chart

    wait = index(
        plan,
        lambda c: name(c) == "kubectl" and "wait" in c and "rayservice/marcelle-torch" in c,
        "waits for the RayService",
    )
    assert "--for=condition=Ready" in plan[wait] and any(a.startswith("--timeout=") for a in plan[wait])
    notes = index(plan, lambda c: name(c) == "helm" and c[1:3] == ["get", "notes"], "prints the NOTES (login)")
    forward = index(plan, lambda c: name(c) == "kubectl" and "port-forward" in c, "port-forwards")
    assert "svc/marcelle-torch-webapp" in plan[forward] and "8080:80" in plan[forward]
    assert chart < wait < notes < forward
    for i in (wait, forward):
        assert plan[i][plan[i].index("--context") + 1] == "kind-marcelle-torch", "kubectl must target the kind cluster"


def test_dry_run_follows_the_environment():
    plan = dry_run(
        DRY_RUN="1", CLUSTER="demo2", RELEASE="r1", NAMESPACE="ns1", IMAGE_TAG="dev", SKIP_BUILD="1", PORT="0"
    )
    assert not [c for c in plan if c[:2] == ["docker", "build"]], "SKIP_BUILD=1 still builds"
    assert ["kind", "load", "docker-image", "marcelle-torch/ray:dev", "--name", "demo2"] in plan
    chart = next(c for c in plan if name(c) == "helm" and c[1:4] == ["upgrade", "--install", "r1"])
    assert chart[chart.index("--namespace") + 1] == "ns1"
    forward = next(c for c in plan if "port-forward" in c)
    assert "svc/r1-marcelle-torch-webapp" in forward and ":80" in forward


def test_unknown_argument_is_one_line():
    result = subprocess.run([str(REPO / "k8s" / "kind-demo.sh"), "--nope"], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_makefile_targets_run_the_scripts():
    makefile = (REPO / "Makefile").read_text()
    assert "\nkind-demo:" in makefile and "k8s/kind-demo.sh" in makefile
    assert "\ne2e-kind:" in makefile and "tests/e2e" in makefile
