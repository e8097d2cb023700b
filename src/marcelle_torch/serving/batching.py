"""Adaptive batching for one model replica: a batch is what is queued when the model is free.

One loop per replica takes the queued requests (up to ``max_batch_size`` instances), runs one
forward pass in a worker thread, hands each request its rows, and starts again. While a pass
runs, the requests that arrive meanwhile queue; the next batch takes all of them at once. So a
lone request is run at once (no fixed wait at low load), and under load batches grow by
themselves to what the model's speed lets pile up.

Why not ``@serve.batch``: in ray 2.60.0 serve/batching.py ``_process_batches`` forms the next
batch as soon as the previous one is handed to a task, before that task gets the
``max_concurrent_batches`` semaphore. With ``batch_wait_timeout_s=0`` it therefore cuts the queue
into batches of one while a pass runs, and with a wait > 0 every lone request pays the wait.
This loop forms a batch only when the model can take it. ``max_batch_size`` counts instances
(a request of several instances counts as several; a request larger than the limit runs alone).

Where a pass runs: a short one (its recent mean under ``INLINE_MAX_S``) on the event loop
itself, a long one in the worker thread. Handing a pass to a thread and back costs two thread
wake-ups, which on a busy machine are each a trip through the OS scheduler (measured by
bench/serve_latency.py: the same in-process server answered c=1 in 1.4 ms with the pass on the
loop and 3.0-4.4 ms with it in a thread, on 2 loaded cores); a loop blocked for a millisecond
costs less. A long pass (a compute-bound model) goes to the thread, so the loop keeps reading
requests, health checks and timeouts meanwhile. The first pass runs in the thread (its time is
not known yet).

How large a batch: up to ``max_batch_size``, but no larger than the model's *knee*
(``BatchCap``). Each pass's time per instance is kept by batch size (in powers of two); batches
stop growing past the largest size whose time per instance is within 10% of the best seen. A
compute-bound model on one thread gets slower per instance past a point (bench/serve_latency.py:
ResNet-18 on one torch thread gave 41.7 samples/s in batches of 4 and 34.4 in batches of 16), a
light one keeps getting faster, so the first is capped there and the second is not. Every
``EXPLORE_EVERY`` passes one may take the full size again, so a knee that moves is found again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

INLINE_MAX_S = 0.005


class BatchCap:
    """The batch size past which a model gets no faster per instance (see the module's docstring)."""

    EXPLORE_EVERY = 32
    TOLERANCE = 1.10

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.cost: dict[int, float] = {}  # batch size (next power of two) -> moving mean s/instance
        self.passes = 0

    def observe(self, instances: int, seconds: float) -> None:
        if instances <= 0:
            return
        size = 1 << (instances - 1).bit_length()  # 3 -> 4, 4 -> 4, 5 -> 8
        per = seconds / instances
        previous = self.cost.get(size)
        self.cost[size] = per if previous is None else 0.8 * previous + 0.2 * per
        self.passes += 1

    def limit(self, queued: int | None = None) -> int:
        """Instances the next batch may take, ``queued`` instances waiting (None: as many as it takes)."""
        cost = self.cost.copy()  # observe() runs in the forward thread (a dict copy is atomic)
        if not cost or self.passes % self.EXPLORE_EVERY == 0:
            return self.max_size
        best = min(cost.values())
        near_best = [size for size, per in cost.items() if per <= best * self.TOLERANCE]
        knee = max(near_best)
        size = min(knee, self.max_size) if knee < max(cost) else self.max_size
        # Under a steady load every batch is full: then the size below the smallest near-best one
        # is tried once, so a knee lower down is found too.
        below = min(near_best) // 2
        if 1 <= below < size and below not in cost and (queued is None or queued >= size):
            return below
        return size


class AdaptiveBatcher:
    def __init__(
        self,
        run_batch: Callable[[list], list],
        max_batch_size: int,
        batch_wait_timeout_s: float = 0.0,
        on_delivered: Callable[[int], None] | None = None,
    ):
        """``run_batch(items) -> results`` runs one batch at a time; ``on_delivered(n)`` is told how many
        requests of each pass got their result (not those whose caller had given up)."""
        self.run_batch = run_batch
        self.on_delivered = on_delivered
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.cap = BatchCap(max_batch_size)
        self._queue: collections.deque = collections.deque()
        self._wakeup = asyncio.Event()  # bound to a loop on first use (Python >= 3.10)
        self._task: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.running = False  # a pass is in progress
        self.last_error: BaseException | None = None
        self.pass_s: float | None = None  # moving mean of a pass's duration

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.cap = BatchCap(max_batch_size)

    @property
    def queued(self) -> int:
        """Requests waiting for a pass (not counting the one running)."""
        return len(self._queue)

    def alive(self) -> bool:
        return self._task is None or not self._task.done()

    async def submit(self, item: Any, size: int) -> Any:
        """Queue ``item`` (``size`` instances) and wait for its result."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._loop())
        future = loop.create_future()
        self._queue.append((item, size, future))
        self._wakeup.set()
        return await future

    def _take(self) -> list:
        """Queued requests up to the batch limit (at least one), skipping cancelled ones."""
        taken: list[tuple[Any, asyncio.Future, int]] = []
        limit = self.cap.limit(self._queued_instances())
        total = 0
        while self._queue:
            item, size, future = self._queue[0]
            if future.cancelled():
                self._queue.popleft()
                continue
            if taken and total + size > limit:
                break
            self._queue.popleft()
            taken.append((item, future, size))
            total += size
        return taken

    def _queued_instances(self) -> int:
        return sum(size for _, size, future in self._queue if not future.cancelled())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.batch_wait_timeout_s > 0:
                deadline = time.monotonic() + self.batch_wait_timeout_s
                while self._queued_instances() < self.cap.limit() and time.monotonic() < deadline:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())
                    except TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            self.running = True
            items = [item for item, _, _ in batch]
            instances = sum(size for _, _, size in batch)
            try:
                if self.pass_s is not None and self.pass_s < INLINE_MAX_S:
                    results = self._timed(items, instances)
                else:
                    results = await loop.run_in_executor(self._thread, self._timed, items, instances)
            except Exception as exc:  # every request of the batch gets the error
                self.last_error = exc
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self.running = False
            delivered = 0
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
                    delivered += 1
            if self.on_delivered is not None and delivered:
                self.on_delivered(delivered)
            # Let the loop read what arrived during the pass before the next batch is formed.
            await asyncio.sleep(0)

    def _timed(self, items: list, instances: int) -> list:
        started = time.perf_counter()
        try:
            return self.run_batch(items)
        finally:
            took = time.perf_counter() - started
            self.pass_s = took if self.pass_s is None else 0.8 * self.pass_s + 0.2 * took
            self.cap.observe(instances, took)
