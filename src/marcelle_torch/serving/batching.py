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
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from typing import Any, Callable


class AdaptiveBatcher:
    def __init__(self, run_batch: Callable[[list], list], max_batch_size: int, batch_wait_timeout_s: float = 0.0):
        """``run_batch(items) -> results`` runs in one worker thread, one batch at a time."""
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._queue: collections.deque = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.running = False  # a pass is in progress
        self.last_error: BaseException | None = None

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s

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
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        future = loop.create_future()
        self._queue.append((item, size, future))
        self._wakeup.set()
        return await future

    def _take(self) -> list:
        """Queued requests up to max_batch_size instances (at least one), skipping cancelled ones."""
        taken, total = [], 0
        while self._queue:
            item, size, future = self._queue[0]
            if future.cancelled():
                self._queue.popleft()
                continue
            if taken and total + size > self.max_batch_size:
                break
            self._queue.popleft()
            taken.append((item, future))
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
                while self._queued_instances() < self.max_batch_size and time.monotonic() < deadline:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())
                    except asyncio.TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            self.running = True
            try:
                results = await loop.run_in_executor(self._thread, self.run_batch, [item for item, _ in batch])
            except Exception as exc:  # every request of the batch gets the error
                self.last_error = exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self.running = False
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
