"""Slow clients cannot take Serve down: the edge bounds the time to receive a request.

300 connections to a real `marcelle-torch serve` (Ray Serve behind Ray's HAProxy, the default
mode) send a prediction's headers, then its body at one byte per second: more connections than
the ingress replica takes at once (its `max_ongoing_requests` is 256). While they are all open,
`/healthz` and real predictions must still be answered; each slow connection must then be
answered 408 in the project's JSON error shape and closed, within a bound. A client that sends
its headers slowly is cut off the same way.

Bounded: at most 60 s of flood, 300 connections, loopback only.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time

import httpx

SLOW = 300
BODY_BYTES = 1000  # declared Content-Length; at 1 byte/s the body would take ~17 minutes
FLOOD_BOUND_S = 60.0
# The edge's default time to receive a whole request is 10 s (MARCELLE_TORCH_HTTP_REQUEST_TIMEOUT_S);
# generous on a shared 2-core machine, and still far below the 1000 s these bodies need.
CLOSE_BOUND_S = 45.0
PROBE_TIMEOUT_S = 20.0


def _status_and_body(raw: bytes) -> tuple[int | None, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].split()
    status = int(first[1]) if len(first) >= 2 and first[1].isdigit() else None
    return status, body


class SlowBodies:
    """``n`` connections that send a predict request's headers, then its body one byte per second."""

    def __init__(self, host: str, port: int, n: int, path: str):
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, dict] = {}
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BODY_BYTES}\r\n\r\n"
        ).encode()
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(head)
            s.setblocking(False)
            self.conns[s] = {"opened": time.monotonic(), "raw": b"", "closed": None, "sent": 0}
            self.sel.register(s, selectors.EVENT_READ)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="slow-bodies", daemon=True)

    def open_count(self) -> int:
        return sum(1 for c in self.conns.values() if c["closed"] is None)

    def _run(self) -> None:
        next_byte = time.monotonic() + 1.0
        while not self.stop.is_set() and self.open_count():
            for key, _ in self.sel.select(timeout=0.2):
                s, c = key.fileobj, self.conns[key.fileobj]
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    c["raw"] += data
                else:
                    c["closed"] = time.monotonic()
                    self.sel.unregister(s)
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for s, c in self.conns.items():
                    if c["closed"] is None and c["sent"] < BODY_BYTES - 1:  # never complete the body
                        try:
                            s.send(b" ")
                            c["sent"] += 1
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            pass  # reset by the peer: the read side sees it

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.conns:
            s.close()
        self.sel.close()


def _probe_loop(base: str, instance: dict, flood: SlowBodies, results: list, done: threading.Event) -> None:
    """/healthz and a real prediction, one after the other, noting how many slow bodies were open."""
    with httpx.Client(base_url=base, timeout=PROBE_TIMEOUT_S) as client:
        while not done.is_set():
            for kind in ("healthz", "predict"):
                open_before = flood.open_count()
                started = time.monotonic()
                try:
                    if kind == "healthz":
                        r = client.get("/healthz")
                        ok = r.status_code == 200 and r.json().get("status") == "ok"
                    else:
                        r = client.post("/v1/models/digits:predict", json={"instances": [instance]})
                        ok = r.status_code == 200 and "label" in r.json()["predictions"][0]
                    outcome = r.status_code
                except httpx.HTTPError as exc:
                    ok, outcome = False, type(exc).__name__
                results.append(
                    {
                        "kind": kind,
                        "ok": ok,
                        "outcome": outcome,
                        "open_before": open_before,
                        "open_after": flood.open_count(),
                        "s": time.monotonic() - started,
                    }
                )
                if done.is_set():
                    return


def test_slow_bodies_are_cut_off_and_probes_still_answered(serve_process, make_digit):
    base = serve_process.url
    instance, _ = make_digit(0)
    assert httpx.get(base + "/healthz", timeout=PROBE_TIMEOUT_S).status_code == 200

    flood = SlowBodies("127.0.0.1", serve_process.port, SLOW, "/v1/models/digits:predict")
    results: list[dict] = []
    done = threading.Event()
    prober = threading.Thread(target=_probe_loop, args=(base, instance, flood, results, done), daemon=True)
    started = time.monotonic()
    try:
        flood.start()
        time.sleep(2.0)  # every slow connection has sent its headers and started its body
        prober.start()
        while flood.open_count() and time.monotonic() - started < min(CLOSE_BOUND_S, FLOOD_BOUND_S):
            time.sleep(0.5)
        done.set()
        prober.join(PROBE_TIMEOUT_S * 2 + 5)
    finally:
        done.set()
        flood.close()

    conns = list(flood.conns.values())
    summary = (
        f"probes: {[(r['kind'], r['outcome'], r['open_before'], round(r['s'], 1)) for r in results]}; "
        f"slow connections still open after {CLOSE_BOUND_S:.0f}s: "
        f"{sum(1 for c in conns if c['closed'] is None)}"
    )
    # While every slow body was still open, health and predictions were answered.
    while_open = [r for r in results if r["open_before"] == SLOW and r["open_after"] == SLOW]
    assert any(r["ok"] and r["kind"] == "healthz" for r in while_open), summary
    assert any(r["ok"] and r["kind"] == "predict" for r in while_open), summary
    assert all(r["ok"] for r in results), summary
    # Each slow connection was answered 408, in the project's JSON shape, and closed, within the bound.
    assert all(c["closed"] is not None for c in conns), summary
    statuses = [_status_and_body(c["raw"]) for c in conns]
    assert {s for s, _ in statuses} == {408}, (
        f"statuses of the slow connections: {sorted({s for s, _ in statuses}, key=str)}"
    )
    error = json.loads(statuses[0][1])["error"]
    assert error["code"] == "request_timeout" and error["message"], error
    # Serve is still fine afterwards.
    r = httpx.post(base + "/v1/models/digits:predict", json={"instances": [instance]}, timeout=PROBE_TIMEOUT_S)
    assert r.status_code == 200, r.text


def test_slow_headers_are_cut_off(serve_process):
    """A client that sends its headers a byte a second (slowloris) is answered 408 and closed.

    This answer comes from HAProxy's HTTP/1 layer before any request exists, which sends its
    built-in page whatever the errorfiles say (haproxy 2.8 src/mux_h1.c, h1_send_error); only the
    status is checked here. A request that is not HTTP gets HAProxy's built-in 400 the same way.
    """
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{serve_process.port}\r\nX-Slow: ".encode()
    with socket.create_connection(("127.0.0.1", serve_process.port), timeout=CLOSE_BOUND_S) as s:
        s.sendall(head)
        started = time.monotonic()
        s.settimeout(1.0)
        raw = b""
        while time.monotonic() - started < CLOSE_BOUND_S:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                try:
                    s.send(b"a")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
    assert _status_and_body(raw)[0] == 408, f"after {time.monotonic() - started:.0f}s: {raw[:200]!r}"
