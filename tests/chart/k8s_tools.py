"""Finds the real helm and kubectl, and renders the chart (shared by tests/chart and tests/e2e)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "marcelle-torch"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
TOOLS_BIN = REPO / ".cache" / "k8s-tools" / "bin"
# Reference data next to the checkout (never copied in): KubeRay's CRDs.
# KubeRay CRDs (reference data beside the checkout; KUBERAY_CRDS points elsewhere).
CRD_DIR = Path(os.environ.get("KUBERAY_CRDS") or REPO.parent / "shared" / "kuberay" / "crds")
INSTALL_HINT = "run tests/chart/install-tools.sh"


def _works(path: str, *args: str) -> bool:
    try:
        return subprocess.run([path, *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def find_tool(name: str) -> str | None:
    """Our pinned copy first, then PATH; only a binary that answers its version command counts
    (some machines ship a `kubectl` shim that is not kubectl)."""
    probe = {"helm": ("version", "--short"), "kubectl": ("version", "--client", "-o", "json")}[name]
    for candidate in (TOOLS_BIN / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK) and _works(str(candidate), *probe):
            return str(candidate)
    return None


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    binary = find_tool("helm")
    if binary is None:
        raise RuntimeError(f"helm not found ({INSTALL_HINT})")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def render_text(
    *values_files: Path | str,
    sets: tuple[str, ...] = (),
    release: str = "mt",
    namespace: str = "marcelle-torch",
    check: bool = True,
) -> subprocess.CompletedProcess:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return helm(*args, check=check)


@functools.cache
def _render_cached(values_files: tuple[str, ...], sets: tuple[str, ...]) -> str:
    return render_text(*values_files, sets=sets).stdout


def render(*values_files: Path | str, sets: tuple[str, ...] = ()) -> list[dict]:
    """The rendered objects (cached per value set; treat them as read-only)."""
    text = _render_cached(tuple(str(f) for f in values_files), tuple(sets))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def ci_values(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objects: list[dict]):
    """(owner description, pod spec) for every pod template, RayService groups included."""
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{kind}/{name}", obj["spec"]["template"]["spec"]
        elif kind == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            yield f"{kind}/{name} head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{kind}/{name} group {group['groupName']}", group["template"]["spec"]


def ray_worker_groups(objects: list[dict]) -> dict[str, dict]:
    ray = one(objects, "RayService")
    return {g["groupName"]: g for g in ray["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])}


def kubectl_json(*args: str) -> dict:
    binary = find_tool("kubectl")
    out = subprocess.run([binary, *args, "-o", "json"], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)
