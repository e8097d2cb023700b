"""Custom Serve metrics, recorded in the model replicas through ``ray.serve.metrics``.

Ray exports them on each node's metrics port with the prefix ``ray_`` and adds its own
tags ``deployment``, ``replica``, ``application`` (and ``SessionName``, ``Version``...).

=========================================  =========  ================  ==========================
Exported name                              Type       Tags              Meaning
=========================================  =========  ================  ==========================
``ray_marcelle_torch_predictions_total``   counter    model, outcome    requests answered by a
                                                                        model replica; outcome is
                                                                        ok | bad_input | error |
                                                                        timeout
``ray_marcelle_torch_batch_size``          histogram  model             instances per forward pass
(``_bucket``, ``_sum``, ``_count``)                                     (several requests batched)
``ray_marcelle_torch_model_latency_seconds`` histogram model, device    time of one batched
(``_bucket``, ``_sum``, ``_count``)                                     forward pass
=========================================  =========  ================  ==========================

Every outcome is counted by the model's own deployment (``deployment="model-<name>"``), which
is its HTTP ingress: it answers the 400s, 500s and 504s itself. A fault of the router (route
``/``) is counted as ``outcome="error"`` with ``model=""``.
"""

from __future__ import annotations

BATCH_SIZE_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LATENCY_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class ServeMetrics:
    """The three metrics above, created once per replica (Ray metrics are per-process)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.predictions = metrics.Counter(
            "marcelle_torch_predictions",
            description="Prediction requests by model and outcome (ok, bad_input, error, timeout).",
            # Ray 2.60 annotates tag_keys as Tuple[str] (one element) while taking any number.
            tag_keys=("model", "outcome"),  # type: ignore[arg-type]
        )
        self.batch_size = metrics.Histogram(
            "marcelle_torch_batch_size",
            description="Instances per batched forward pass.",
            boundaries=BATCH_SIZE_BOUNDARIES,
            tag_keys=("model",),
        )
        self.latency = metrics.Histogram(
            "marcelle_torch_model_latency_seconds",
            description="Duration of one batched forward pass, in seconds.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model", "device"),  # type: ignore[arg-type]  # Tuple[str], as above
        )

    def outcome(self, model: str, outcome: str, count: int = 1) -> None:
        self.predictions.inc(count, tags={"model": model, "outcome": outcome})
