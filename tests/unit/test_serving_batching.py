"""The adaptive batcher: no wait when alone, batches while the model is busy, instances counted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

from marcelle_torch.serving.batching import AdaptiveBatcher, BatchCap


def run(coro):
    # In a thread of its own: in the full suite, Playwright's sync API (the browser tests) can
    # leave an event loop marked as running in the main thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_a_lone_request_is_run_at_once():
    calls = []
    batcher = AdaptiveBatcher(lambda items: calls.append(items) or items, max_batch_size=16)

    async def main():
        return await batcher.submit("a", 1)

    # Alone, it is a pass of its own at once (no wait for company that is not coming).
    assert run(main()) == "a" and calls == [["a"]]


def test_requests_arriving_during_a_pass_form_the_next_batch_counting_instances():
    batches = []

    def slow(items):
        batches.append([i for i, _ in items])
        time.sleep(0.05)  # long enough that the others queue meanwhile
        return items

    batcher = AdaptiveBatcher(slow, max_batch_size=5)

    async def main():
        first = asyncio.ensure_future(batcher.submit(("first", 1), 1))
        await asyncio.sleep(0.01)  # the first pass is running
        rest = [asyncio.ensure_future(batcher.submit((f"r{i}", 2), 2)) for i in range(4)]
        return await asyncio.gather(first, *rest)

    results = run(main())
    assert [r[0] for r in results] == ["first", "r0", "r1", "r2", "r3"]
    # 4 requests of 2 instances with at most 5 instances a pass: 2 + 2, then 2 + 2.
    assert batches == [["first"], ["r0", "r1"], ["r2", "r3"]]


def test_a_failing_pass_fails_its_requests_and_the_loop_goes_on():
    state = {"fail": True}

    def flaky(items):
        if state.pop("fail", False):
            raise RuntimeError("boom")
        return items

    batcher = AdaptiveBatcher(flaky, max_batch_size=4)

    async def main():
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit("x", 1)
        return await batcher.submit("y", 1), batcher.alive()

    assert run(main()) == ("y", True)


def test_cancelled_requests_are_skipped():
    seen = []

    def record(items):
        seen.extend(items)
        time.sleep(0.02)
        return items

    batcher = AdaptiveBatcher(record, max_batch_size=8)

    async def main():
        first = asyncio.ensure_future(batcher.submit("first", 1))
        await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(batcher.submit("gone", 1))
        kept = asyncio.ensure_future(batcher.submit("kept", 1))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(first, kept)

    assert run(main()) == ["first", "kept"]
    assert "gone" not in seen


def feed(cap: BatchCap, seconds_per_instance, sizes=(1, 2, 4, 8, 16), rounds: int = 5) -> None:
    for _ in range(rounds):
        for n in sizes:
            cap.observe(n, n * seconds_per_instance(n))


def test_a_model_slower_per_instance_in_large_batches_is_capped_at_its_knee():
    # ResNet-18 on one torch thread (bench/serve_latency.py): 24 ms/instance up to 4, 29 at 16.
    cap = BatchCap(16)
    feed(cap, lambda n: 0.024 if n <= 4 else 0.0255 if n <= 8 else 0.029)
    cap.passes = 1  # not an exploring pass
    assert cap.limit() == 8  # within 10% of the best; 16 is not
    cap.passes = BatchCap.EXPLORE_EVERY  # every so often the full size is tried again
    assert cap.limit() == 16


def test_a_model_faster_per_instance_in_larger_batches_is_not_capped():
    cap = BatchCap(16)
    feed(cap, lambda n: 0.001 / n + 0.0001)
    cap.passes = 1
    assert cap.limit() == 16
    assert BatchCap(16).limit() == 16  # nothing measured yet: the full size


def test_the_batcher_keeps_batches_at_the_knee_under_load():
    """Real passes: a fake model whose time per instance jumps past 4 instances."""

    def model(items):
        time.sleep(0.002 * len(items) * (1 if len(items) <= 4 else 3))
        return items

    async def main():
        batcher = AdaptiveBatcher(model, max_batch_size=16)
        sizes = []
        batcher.cap.observe = (lambda observe: lambda n, s: (sizes.append(n), observe(n, s)))(batcher.cap.observe)
        await asyncio.gather(*(batcher.submit(i, 1) for i in range(200)))
        return sizes

    sizes = run(main())
    late = sizes[len(sizes) // 2 :]
    assert max(late) == 16 and sorted(late)[len(late) // 2] <= 4, sizes  # explores, mostly at the knee
