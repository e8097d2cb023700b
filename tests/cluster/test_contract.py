"""The render and the code agree: every env var and argument a container gets is read by its
code, every variable the code requires is set, and Ray exports metrics where the PodMonitors
scrape. Each check is shown to fail on a copy of the render broken the way a chart edit could
break it. No hosts needed (only helm)."""

from __future__ import annotations

import contract
import kuberay
from render import by_kind, deep, one

NEEDS_HOSTS = False


def _deployment_with_env(objects, name):
    for d in by_kind(objects, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if any(v["name"] == name for v in c.get("env", [])):
                return d, c
    raise AssertionError(f"no Deployment sets {name}")


def test_render_and_code_agree(objects):
    problems = contract.problems(objects)
    assert not problems, "\n".join(problems)


def test_metrics_export_port_is_the_scraped_port(objects):
    assert not contract.metrics_port_problems(objects)


def _env_names(objects):
    return sorted(
        {
            v["name"]
            for d in by_kind(objects, "Deployment")
            for c in d["spec"]["template"]["spec"]["containers"]
            for v in c.get("env", [])
        }
    )


def test_renamed_env_var_is_caught(objects):
    """Re-break: each env var a Deployment sets, renamed in turn, is reported as read by no code."""
    names = _env_names(objects)
    assert names
    missed = []
    for name in names:
        broken = deep(objects)
        _, container = _deployment_with_env(broken, name)
        for var in container["env"]:
            if var["name"] == name:
                var["name"] = name + "_RENAMED"
        found = contract.problems(broken)
        if not any(f"env {name}_RENAMED is read by no code" in p for p in found):
            missed.append(name)
    assert not missed, f"renames not caught: {missed}"
    print(f"renames caught: {len(names)}: {names}")


def test_unknown_argument_is_caught(objects):
    broken = deep(objects)
    worker = next(
        c
        for d in by_kind(broken, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if any(str(a).startswith("--") for a in c.get("args", []))
    )
    first = next(i for i, a in enumerate(worker["args"]) if str(a).startswith("--"))
    worker["args"][first] = worker["args"][first] + "-typo"
    assert any("is read by no code" in p for p in contract.problems(broken))


def test_init_containers_commands_are_checked(objects):
    """Re-break: each model init container's --out renamed, and `model fetch`'s required --out
    dropped (a nested CLI command's own options): each is reported."""
    inits = [
        (d["metadata"]["name"], c)
        for d in by_kind(objects, "Deployment")
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
    ]
    assert {c["command"][1] for _, c in inits} == {"model", "export-onnx"}, "the render has no models init containers"
    for owner, container in inits:
        for change in ("typo", "drop") if container["command"][1] == "model" else ("typo",):
            broken = deep(objects)
            c = next(
                c
                for d in by_kind(broken, "Deployment")
                if d["metadata"]["name"] == owner
                for c in d["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == container["name"]
            )
            at = c["command"].index("--out")
            if change == "typo":
                c["command"][at] = "--output"
                words = "argument --output is read by no code"
            else:
                del c["command"][at : at + 2]
                words = "required argument --out is not rendered"
            found = contract.problems(broken)
            assert any(container["name"] in p and words in p for p in found), (owner, change, found)


def test_required_variable_missing_is_caught(objects):
    """A variable the backend's config requires (no value in its config files) left unset."""
    from render import backend_env_map, backend_env_required, image_of, resolve_env

    broken = deep(objects)
    for d in by_kind(broken, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if image_of(c).base.split(":")[0].endswith("node"):
                meta = {"metadata": {"name": "p", "namespace": "n", "labels": {}}, "status": {"podIP": "198.18.0.2"}}
                env = {**image_of(c).env, **resolve_env(c, meta, broken)}
                required = sorted(backend_env_required(env) & {v["name"] for v in c["env"]})
                if not required:
                    # Authentication off: its JWT secret is not needed; turn it on in the copy.
                    auth_var = next(
                        var for var, key in backend_env_map().items() if key == ("authentication", "enabled")
                    )
                    next(v for v in c["env"] if v["name"] == auth_var)["value"] = "true"
                    env = {**image_of(c).env, **resolve_env(c, meta, broken)}
                    required = sorted(backend_env_required(env) & {v["name"] for v in c["env"]})
                assert required, "the backend's config requires nothing the render sets"
                c["env"] = [v for v in c["env"] if v["name"] != required[0]]
                found = contract.problems(broken)
                assert any(f"env {required[0]} is required" in p for p in found), found
                return
    raise AssertionError("no backend (node image) container in the render")


def test_missing_metrics_export_port(objects):
    """Re-break: `metrics-export-port` removed from every group's rayStartParams. KubeRay v1.7.0's
    setMissingRayStartParams puts back DefaultMetricsPort (8080), so the generated command is
    unchanged and so is what Prometheus scrapes: the tier reports nothing, rightly. A port that
    differs from the scraped container port is what breaks scraping, and that is caught."""
    broken = deep(objects)
    spec = one(broken, "RayService")["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        group.get("rayStartParams", {}).pop("metrics-export-port", None)
    assert not contract.metrics_port_problems(broken)
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        scraped = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        _, params = kuberay.generate_ray_start_command(
            "worker", kuberay.set_missing_ray_start_params({}, "worker", "6379", "h"), {}
        )
        assert params["metrics-export-port"] == str(scraped)
    for group in groups:
        group.setdefault("rayStartParams", {})["metrics-export-port"] = "9999"
    assert len(contract.metrics_port_problems(broken)) == len(groups)
