"""The model store of the tests that install the chart with a `models` value: a user's model
folder (tests/chart/model_folder.py: RGB, normalised by its manifest, logits; not a built-in) as a
.tar.gz on a plain HTTP host beside the release, reached by a Service-style name. The cluster tier
runs it as a host of its own (cluster.start_file_host); the kind e2e as a Pod and a Service."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

NAME, PORT, MODEL = "model-store", 8000, "shapes"


def build(workdir: Path) -> SimpleNamespace:
    """The model folder, and the store's folder holding its archive (with the archive's sha256)."""
    from model_folder import make_archive, make_folder

    folder = make_folder(workdir, MODEL)
    store = workdir / "store"
    store.mkdir()
    archive = store / f"{MODEL}.tar.gz"
    return SimpleNamespace(
        name=MODEL, folder=folder, store=store, archive=archive, sha256=make_archive(folder, archive)
    )


def chart_value(model: SimpleNamespace, namespace: str) -> dict:
    """The `models` item naming the archive on the store (its Service in ``namespace``), with
    replica settings of its own, so the chart's per-model values reach a real Serve deploy."""
    url = f"http://{NAME}.{namespace}.svc:{PORT}/{model.archive.name}"
    return {
        "name": model.name,
        "uri": url,
        "sha256": model.sha256,
        "minReplicas": 1,
        "maxReplicas": 1,
        "maxBatchSize": 8,
    }


def helm_sets(value: dict) -> list[str]:
    """``value`` as the first `models` item, in `--set` arguments."""
    return [f"models[0].{key}={item}" for key, item in value.items()]


def kubernetes_objects(model: SimpleNamespace, namespace: str, image: str) -> list[dict]:
    """The store on a cluster: the archive in a ConfigMap, served by `python -m http.server` in
    ``image`` (any image with Python: the Ray image), behind a Service named NAME."""
    labels = {"app.kubernetes.io/name": NAME}
    meta = {"name": NAME, "namespace": namespace, "labels": labels}
    data = {model.archive.name: base64.b64encode(model.archive.read_bytes()).decode()}
    server = {
        "name": "http",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python", "-m", "http.server", str(PORT), "--directory", "/srv"],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2},
        "volumeMounts": [{"name": "store", "mountPath": "/srv", "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000},
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "binaryData": data},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [server], "volumes": [{"name": "store", "configMap": {"name": NAME}}]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
        },
    ]
