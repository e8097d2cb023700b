"""The run worker's progress sender: the model's report never waits on the backend, only the
newest value is sent, a partial image is made only when sent, and the rate is capped."""

from __future__ import annotations

import itertools
import threading
import time

from marcelle_torch.worker.progress import ProgressSender
from marcelle_torch.worker.protocol import CurrentRun, Stop


class Backend:
    """The run's writes as the sender makes them; every patch blocks until ``release`` is set."""

    def __init__(self, rate: float = 1000.0, block: bool = False):
        self.rate = rate
        self.sent: list[tuple[float, dict]] = []
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.gone = False

    def sender(self, current: CurrentRun) -> ProgressSender:
        return ProgressSender(current.id, lambda data: self.patch(current, data), self.rate)

    def patch(self, current, data):
        self.release.wait(10)
        if self.gone:
            current.request_stop("canceled")
            raise Stop("canceled")
        self.sent.append((time.monotonic(), data))


def wait_for(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_report_does_not_wait_on_a_slow_backend_and_only_the_newest_is_sent():
    worker = Backend(block=True)
    sender = worker.sender(CurrentRun(id="r", model="m"))
    made = []
    t0 = time.monotonic()
    for i in range(1, 201):
        sender.offer(i / 200, lambda i=i: made.append(i) or f"png-{i}")
    assert time.monotonic() - t0 < 0.5  # 200 reports while the first patch is still blocked
    worker.release.set()
    wait_for(lambda: worker.sent and worker.sent[-1][1]["progress"] == 1.0)
    sender.close()
    progress = [d["progress"] for _, d in worker.sent]
    assert len(progress) <= 3, progress  # the first, maybe one in between, the newest
    assert progress == sorted(progress)
    # Partials were made only for what was sent, each the one of its own progress value.
    assert len(made) == len(progress)
    assert [d["partial"] for _, d in worker.sent] == [f"png-{round(p * 200)}" for p in progress]


def test_the_rate_is_capped():
    worker = Backend(rate=20)
    sender = worker.sender(CurrentRun(id="r", model="m"))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        sender.offer(min(1.0, time.monotonic() - t0))
        time.sleep(0.001)
    sender.close()
    times = [t for t, _ in worker.sent]
    assert 10 <= len(times) <= 22, len(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1 / 20 - 0.01, gaps


def test_nothing_is_sent_after_close_and_a_gone_run_stops_the_model():
    worker = Backend()
    current = CurrentRun(id="r", model="m")
    sender = worker.sender(current)
    worker.gone = True
    sender.offer(0.1)
    wait_for(current.stop.is_set)
    assert current.reason == "canceled"
    sender.close()
    worker.gone = False
    sender.offer(0.5)
    time.sleep(0.2)
    assert worker.sent == []
