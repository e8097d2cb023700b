"""A user generation model (loaded by import path) whose run lasts as long as asked and reports
progress steadily: runs that outlast a backend outage or a lease, without a heavy model."""

import time

from torch import nn

from marcelle_torch.models import ModelSpec, TensorInput

STEP_S = 0.1


class Steady(nn.Module):
    """Nothing to compute: the run below only waits."""

    def forward(self, x):
        return x


def spec() -> ModelSpec:
    return ModelSpec(
        name="steady",
        task="generation",
        build=Steady,
        input=TensorInput(shape=(1,)),
        description="waits params.seconds, reporting progress every 0.1 s",
        params={"seconds": 1.0},
        run=run,
    )


def run(model, input_, params, report) -> dict:
    steps = max(1, int(float((params or {}).get("seconds", 1.0)) / STEP_S))
    started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(STEP_S)
        report(step / steps)
    return {"label": "done", "input": input_, "seconds": round(time.monotonic() - started, 2)}
