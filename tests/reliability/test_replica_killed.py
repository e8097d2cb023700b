"""The model's Serve replica SIGKILLed while 16 clients send predictions back to back: Serve
starts a new replica; while it is away every failed request is a JSON 503 with Retry-After
(no 500, no request past the request timeout); only a request handed to the replica as it died
may lose its connection; the gap is measured.

Real ``marcelle-torch serve`` (the session's, tests/conftest.py); the replica's process is
found by its title (``ray::ServeReplica:<app>:model-digits``) and killed as a crash would.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import httpx
import pytest
from faults import record, replica_pids

pytestmark = pytest.mark.ray

CLIENTS = 16
REQUEST_TIMEOUT_S = 30.0  # the packaged serve config's args.request_timeout_s
WARM_S = 3.0
# How long after the kill HAProxy may still hand a request to the dead replica, before Serve's
# controller and HAProxy see it gone (measured: under a second; five for a shared machine).
HANDOVER_S = 5.0


class Load:
    """``clients`` threads posting one digit each, back to back, every answer recorded."""

    def __init__(self, url: str, instance: dict, clients: int):
        self.url = f"{url}/v1/models/digits:predict"
        self.body = {"instances": [instance]}
        self.stop = threading.Event()
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S + 15) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                entry = {"start": started}
                try:
                    response = client.post(self.url, json=self.body)
                    entry.update(
                        status=response.status_code,
                        retry_after=response.headers.get("retry-after"),
                        content_type=response.headers.get("content-type", ""),
                        text=response.text[:300],
                    )
                except httpx.HTTPError as exc:
                    entry.update(status=None, exception=f"{type(exc).__name__}: {exc}")
                entry["end"] = time.monotonic()
                with self.lock:
                    self.results.append(entry)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT_S + 20)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.results)


def json_error_code(entry: dict) -> str | None:
    import json

    try:
        body = json.loads(entry["text"])
        return body["error"]["code"] if body["error"]["message"] else None
    except (ValueError, KeyError, TypeError):
        return None


def test_a_killed_replica_is_replaced_and_only_json_503s_fail_meanwhile(serve_process, make_digit):
    serve_url, session = serve_process.url, serve_process.pid
    instance, _ = make_digit(3)
    assert (
        httpx.post(f"{serve_url}/v1/models/digits:predict", json={"instances": [instance]}, timeout=60).status_code
        == 200
    )
    with Load(serve_url, instance, CLIENTS) as load:
        time.sleep(WARM_S)
        victims = replica_pids(session)
        assert victims, "no ServeReplica process of model-digits found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def recovered():
            new = [p for p in replica_pids(session) if p not in victims]
            after = [r for r in load.snapshot() if r["start"] > killed_at]
            last_failure = max((r["end"] for r in after if r["status"] != 200), default=killed_at)
            fresh_ok = [r for r in after if r["status"] == 200 and r["start"] > last_failure]
            return new and len(fresh_ok) >= 3 * CLIENTS

        deadline = time.monotonic() + 240
        while not recovered():
            assert time.monotonic() < deadline, "Serve did not recover within 240 s of the replica's death"
            time.sleep(0.5)
    results = load.snapshot()

    after = [r for r in results if r["end"] > killed_at]
    unanswered = [r for r in results if r["status"] is None]
    failed = [r for r in after if r["status"] not in (200, None)]
    # A request the dying replica was about to take may lose its connection with no answer
    # (HAProxy hands it to the replica before its health check sees it gone; a known gap, in
    # docs/ray-serve.md). Any request sent once that window is over gets an HTTP answer.
    late = [r for r in unanswered if r["start"] > killed_at + HANDOVER_S]
    assert not late, f"{len(late)} requests sent after the kill got no HTTP answer: {late[:3]}"
    assert len(unanswered) <= CLIENTS, f"{len(unanswered)} requests got no HTTP answer: {unanswered[:3]}"
    not_503 = [r for r in results if r["status"] not in (200, 503, None)]  # None: bounded above
    assert not not_503, f"answers other than 200/503: {[(r['status'], r['text']) for r in not_503[:3]]}"
    for r in failed:
        assert r["content_type"].startswith("application/json") and json_error_code(r) in ("not_ready", "overloaded"), r
        assert r["retry_after"] and r["retry_after"].isdigit(), f"503 without Retry-After: {r}"
    slowest = max(r["end"] - r["start"] for r in results)
    assert slowest < REQUEST_TIMEOUT_S + 5, f"a request took {slowest:.1f}s (request timeout {REQUEST_TIMEOUT_S}s)"

    # The gap: the longest time without a successful answer, from the kill on.
    ok_ends = sorted([killed_at] + [r["end"] for r in after if r["status"] == 200])
    gap = max(b - a for a, b in itertools.pairwise(ok_ends))
    failed_span = (max(r["end"] for r in failed) - killed_at) if failed else 0.0
    print(
        f"replica {victims} killed: {len(after)} requests after the kill, {len(failed)} answered 503 "
        f"(JSON, Retry-After) over {failed_span:.1f}s, {len(unanswered)} lost their connection at the kill; "
        f"longest time without a success {gap:.1f}s; "
        f"slowest request {slowest:.1f}s; new replica {replica_pids(session)}"
    )
    meta = httpx.get(f"{serve_url}/v1/models/digits", timeout=60)
    assert meta.status_code == 200 and httpx.get(f"{serve_url}/readyz", timeout=60).status_code == 200
    record(
        "replica_killed",
        {
            "fault": f"SIGKILL of the model-digits replica under {CLIENTS} concurrent clients",
            "requests": len(results),
            "requests_after_kill": len(after),
            "failed_503_json_retry_after": len(failed),
            "failed_other": 0,
            "connection_errors": len(unanswered),
            "gap_s": round(gap, 1),
            "failures_span_s": round(failed_span, 1),
            "slowest_request_s": round(slowest, 1),
        },
    )
