#!/usr/bin/env python3
"""Writes the chart's README.md from values.yaml (helm-docs style, no extra tool needed).

Every value carries a `# --` comment right above its key; a map documented as a whole
(e.g. `resources`) covers its children. Fails, naming them, if any value is undocumented.

    python charts/marcelle-torch/gen_readme.py          # rewrite README.md
    python charts/marcelle-torch/gen_readme.py --check  # exit 1 if README.md is stale
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):(?:\s|$)")

HEADER = """\
# marcelle-torch Helm chart

{description}

Chart version `{version}`, app version `{app_version}`, Ray `{ray}`, KubeRay operator `{kuberay}`.

It installs a KubeRay `RayService` (Ray Serve with the project's packaged serve config; a
head, a CPU worker group and an optional GPU worker group, autoscaled in-tree), the Marcelle
backend, the run worker and the web app. The web app's nginx proxies `/serve/` and
`/backend/`, so one `kubectl port-forward` serves the whole demo.

## Install

The KubeRay operator (and, for `monitoring.enabled`, kube-prometheus-stack) must be installed
first: see `operator-config/README.md` for the pinned commands.

```sh
helm install marcelle-torch charts/marcelle-torch --namespace marcelle-torch --create-namespace
kubectl -n marcelle-torch wait rayservice/marcelle-torch --for=condition=Ready --timeout=15m   # 30m with GPUs
kubectl -n marcelle-torch port-forward svc/marcelle-torch-webapp 8080:80   # http://127.0.0.1:8080
kubectl -n marcelle-torch get secret marcelle-torch-secrets -o jsonpath='{{.data.admin-password}}' | base64 -d; echo
```

Authentication is on: sign in as `backend.auth.adminEmail` (default `admin@marcelle-torch.local`)
with the generated password above (NOTES print both commands). The backend serves the `runs`
and `instances-teach` data services only (`backend.services`).

Value sets tested in CI are in `ci/` (CPU default, GPU, MongoDB, auth, Ingress, HTTPRoute,
monitoring, models, training). The serve config is `files/serve_config.yaml`, a copy of
`src/marcelle_torch/serving/serve_config.yaml` kept identical by `make chart-sync` (a test
fails when they differ). The chart changes only the model deployments: with `gpu.enabled`,
`ray_actor_options.num_gpus` and `autoscaling_config.min_replicas` (`gpu.modelMinReplicas`,
0 by default, so GPU nodes scale to 0 when idle at the cost of a cold start of minutes for the
first request after); without GPUs, `min_replicas` only if `ray.modelMinReplicas` is set.

Things to know:

- **Ray Pods** keep KubeRay's own labels (the RayService's `<release>-head-svc` selects on
  them); the chart's NetworkPolicies and PodMonitors select Ray Pods by `ray.io/is-ray-node` /
  `ray.io/node-type` and the release's `app.kubernetes.io/instance`. Only the Ray head's autoscaler
  container mounts a service-account token (a projected volume; it scales the worker groups),
  with the chart's ServiceAccount, Role and RoleBinding; the Ray containers get none.
- **Upgrades** (`ray.upgradeStrategy.type`): `NewCluster` (default) brings up a second Ray
  cluster and switches traffic when it serves, so an image change loses no request but needs
  room for two clusters for a while; `None` never replaces the cluster (image changes wait for
  a reinstall). KubeRay's `NewClusterWithIncrementalUpgrade` is refused: in that mode (on by
  default in KubeRay 1.7) there is no `<release>-serve-svc` for the web app to proxy to, only a
  Gateway that depends on your Gateway controller.
- **Ray's dashboard** asks for Ray's token (`ray.auth`, on): KubeRay keeps it in a Secret named
  after the serving Ray cluster (key `auth_token`); the NOTES print how to read and send it.
  Predictions through `/serve/` need none.
- **Head-node fault tolerance** (`ray.gcsFaultTolerance`, off): the head keeps the cluster's
  state in a Redis you run (address and password from your Secret), so a lost head comes back
  with its Serve applications while the workers keep answering (`ci/ha-values.yaml`).
- **The KubeRay operator** reaches the Ray head through the NetworkPolicy by its Pod labels
  (`app.kubernetes.io/name=kuberay-operator`) from any namespace, or from
  `networkPolicy.kuberayOperator.namespace`; with `--use-kubernetes-proxy` list the API server
  in `networkPolicy.kuberayOperator.extraFrom`.
- **Generated secrets** (JWT secret, worker and admin accounts) are kept across `helm upgrade`
  through `lookup`. `helm template` and GitOps tools that render with it see no cluster and
  generate new ones on every render: create a Secret with the keys `jwt-secret`,
  `worker-email`, `worker-password`, `admin-email`, `admin-password` and set
  `backend.existingSecret` to pin them. For MongoDB prefer `backend.mongodb.existingSecret`.
- **Models are values** (`models`): a model folder (`marcelle-model.yaml` beside its weights),
  as an http(s) archive checked by its `sha256` or on a PersistentVolumeClaim, is served beside
  the built-ins with no image rebuild: `POST /serve/v1/models/<name>:predict`, runs of
  `model: <name>`, and its ONNX bundle at `/onnx/<name>/`. Init containers (the Ray image) run
  `marcelle-torch model fetch` in each Pod that needs it; a bad download or model stops that Pod
  at `Init:Error` with a one-line reason naming the model (`kubectl describe pod`), never a
  Serve app that answers 503. The NetworkPolicies restrict ingress only, so the downloads need
  no rule here; a cluster that denies egress must allow DNS and the model host to these Pods.
  Changing `models` changes the Ray Pods, so it rolls out as an upgrade (a new Ray cluster with
  `NewCluster`).
- **Training** (`training.enabled`, off): a `<release>-trainer` Deployment (the run worker's
  image and command, or the GPU Ray image with `training.gpus` on the GPU node pool) claims the
  training runs of the trainable `models` and writes each new version into the model store, a
  `ReadWriteMany` claim (`modelStore`) mounted at `/var/lib/marcelle-torch/store`
  (`MARCELLE_TORCH_STORE`) in the trainer and the run worker (read-write: training and publish
  runs), every Ray Pod (read-only: Serve replicas follow `published`) and the web app (read-only:
  nginx serves `/onnx/<model>/` from the published version's bundle when there is one). The
  claim's root must be writable by uid 10001 (most RWX provisioners make it world-writable).
  The trainer, like the run worker, only connects out: its NetworkPolicy admits Prometheus only
  (`ci/training-values.yaml`).
- **Monitoring**: alert rules and dashboard queries match the release's namespace, so several
  releases share one Prometheus without answering for each other.

## Values

This table is generated from `values.yaml` by `gen_readme.py`; edit the comments there.

| Key | Type | Default | Description |
|-----|------|---------|-------------|
"""


def documented(values_text: str) -> dict[str, str]:
    """Path -> description for every key with a `# --` comment above it."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match:
            continue  # list items and flow values belong to the key above
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(k for _, k in stack)
        if pending is not None:
            docs[path] = " ".join(p for p in pending if p)
            pending = None
    return docs


def leaves(value, prefix: str = ""):
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from leaves(child, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def type_name(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object", type(None): "null"}[
        type(value)
    ]


def lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def render() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    docs = documented(text)
    missing = [leaf for leaf in leaves(values) if not any(leaf == p or leaf.startswith(p + ".") for p in docs)]
    if missing:
        raise SystemExit("values.yaml: no `# --` comment for: " + ", ".join(missing))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    notes = chart.get("annotations", {})
    out = [
        HEADER.format(
            description=" ".join(chart["description"].split()),
            version=chart["version"],
            app_version=chart["appVersion"],
            ray=notes.get("marcelle-torch/ray-version", "?"),
            kuberay=notes.get("marcelle-torch/kuberay-operator-version", "?"),
        )
    ]
    for path, description in docs.items():
        value = lookup(values, path)
        default = json.dumps(value, separators=(", ", ": ")).replace("|", "\\|")
        description = description.replace("|", "\\|")
        out.append(f"| `{path}` | {type_name(value)} | `{default}` | {description} |\n")
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args()
    content = render()
    target = CHART / "README.md"
    if args.check:
        if not target.is_file() or target.read_text() != content:
            print(f"{target} is stale: run `python charts/marcelle-torch/gen_readme.py`", file=sys.stderr)
            return 1
        return 0
    fd, tmp = tempfile.mkstemp(dir=CHART, prefix=".README.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.replace(tmp, target)  # atomic: never a half-written README
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
