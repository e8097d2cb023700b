"""A user model (loaded by import path) whose forward pass holds until the requests a test sends
at once are all queued in the replica, so that what the next pass takes does not depend on how
fast the machine delivers them: a test of the batcher, not of the machine's load.

Each instance is ``[n]``, n being how many requests (one instance each) the test sends at once.
The first pass that sees a given n waits, up to WAIT_S, until its own rows plus the requests
queued behind it in the replica's batcher make n; then every pass answers at once. The replica's
batcher is the one whose pass called ``forward``: the ``batcher`` of ``self`` in a calling frame
(``ModelServer._run_batch``).

The wait runs in the batcher's worker thread only on a fresh replica: the batcher runs a replica's
first pass there (its duration is not known yet), and a pass that waited is long enough to keep the
next ones there too. So a test sends its burst before any other prediction to this model.
"""

import sys
import time

import torch
from torch import nn

from marcelle_torch.models import ModelSpec, TensorInput

WAIT_S = 60.0


def replica_batcher():
    frame = sys._getframe(1)
    while frame is not None:
        batcher = getattr(frame.f_locals.get("self"), "batcher", None)
        if batcher is not None and hasattr(batcher, "queued"):
            return batcher
        frame = frame.f_back
    raise RuntimeError("gated model: forward was not called by a model replica's batcher")


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.released: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = int(x[0, 0])
        if expected > 1 and expected not in self.released:
            self.released.add(expected)
            batcher = replica_batcher()
            deadline = time.monotonic() + WAIT_S
            while x.shape[0] + batcher.queued < expected and time.monotonic() < deadline:
                time.sleep(0.005)
        return torch.full((x.shape[0], 2), 0.5)


def spec() -> ModelSpec:
    return ModelSpec(
        name="gated",
        task="classification",
        build=Gated,
        input=TensorInput(shape=(1,)),
        labels=("a", "b"),
        description="holds its first pass until a burst of requests is queued",
    )
