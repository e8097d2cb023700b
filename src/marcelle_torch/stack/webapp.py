"""A small static server for the built Marcelle web app (``services/frontend/dist``).

It serves the Vite build with a single-page-app fallback to ``index.html``, and
``/config.json`` from a dict given at start, so one build runs against any Serve / backend
URLs. It runs in a thread of the calling process (``marcelle-torch up``, the tests); in
Kubernetes nginx serves the same files.

Build the app first::

    cd services/frontend && npm ci && npm run build     # (what `make webapp` runs)
"""

from __future__ import annotations

import email.utils
import json
import logging
import mimetypes
import os
import shutil
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from ..errors import MarcelleTorchError

log = logging.getLogger(__name__)

# Explicit types for what the app loads: browsers refuse module scripts and streaming wasm
# compilation when the type is wrong, and the system mime.types may lack these entries.
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
}

# Vite puts content-hashed files under assets/: they never change, so they may be cached for
# good. Everything else (index.html, the ONNX bundle, config.json) is revalidated each time.
IMMUTABLE_PREFIX = "/assets/"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
REVALIDATE_CACHE = "no-cache"

# Cross-origin isolation, on every response (documents and the worker scripts they start): it
# gives the page SharedArrayBuffer, which onnxruntime-web's WASM backend needs to run with
# threads (onnxruntime-web 1.30.0, lib/wasm/wasm-factory.ts: isMultiThreadSupported, else one
# thread). What the app loads from other origins keeps working: the Serve and backend calls are
# CORS fetches, socket.io's websocket is not subject to COEP; an <img>/<script> from another
# origin would now need a Cross-Origin-Resource-Policy header (or CORS) from that origin.
# The chart's nginx (services/frontend/nginx.conf) sends the same two headers.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class WebappNotBuilt(MarcelleTorchError):
    status = 500
    code = "missing_build"


class WebappError(MarcelleTorchError):
    status = 500
    code = "webapp"


def content_type(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in MIME_TYPES:
        return MIME_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(str(path))
    return guessed or "application/octet-stream"


def check_dist(dist_dir: str | Path) -> Path:
    """The resolved build folder; WebappNotBuilt (one line, with the fix) when it is not built."""
    dist = Path(dist_dir).expanduser().resolve()
    if not (dist / "index.html").is_file():
        raise WebappNotBuilt(f"the web app is not built: {dist / 'index.html'} is missing; run `make webapp` first "
                             "(cd services/frontend && npm ci && npm run build)")
    return dist


def start_webapp(dist_dir: str | Path, config: dict, host: str = "127.0.0.1",
                 port: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve ``dist_dir`` and ``/config.json`` (= ``config``) on ``host:port`` in a daemon thread.

    ``port=0`` picks a free port. Returns ``(url, stop)``; ``stop()`` closes the server and
    may be called more than once.
    """
    dist = check_dist(dist_dir)
    try:
        config_body = json.dumps(config, indent=2).encode()
    except (TypeError, ValueError) as exc:
        raise WebappError(f"the web app config is not JSON-serialisable: {exc}") from None

    handler = type("WebappHandler", (_Handler,), {"dist": dist, "config_body": config_body})
    server_class = _IPv6Server if ":" in host else _Server
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise WebappError(f"cannot serve the web app on {host}:{port}: {exc.strerror or exc}") from None

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"webapp-{server.server_address[1]}", daemon=True)
    thread.start()
    url = f"http://{_url_host(host)}:{server.server_address[1]}"
    log.info("web app %s on %s", dist, url)

    lock = threading.Lock()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with lock:
            if stopped:
                return
            stopped = True
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(timeout=10)

    return url, stop


class _Server(ThreadingHTTPServer):
    """Keeps its open connections, so that stop() also ends the browser's keep-alive ones."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class _Handler(BaseHTTPRequestHandler):
    dist: Path
    config_body: bytes
    server_version = "marcelle-torch-webapp"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _method_not_allowed(self) -> None:
        self._send_bytes(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", "text/plain; charset=utf-8",
                         extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_PATCH = do_DELETE = _method_not_allowed

    def _serve(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/config.json":
            self._send_bytes(HTTPStatus.OK, self.config_body, "application/json", cache="no-store",
                             send_body=send_body)
            return
        target = self._resolve(path)
        if target is None:
            # A missing file with an extension is a real 404 (a script or model must not get
            # HTML back); any other path is a client-side route of the app.
            if "." in path.rsplit("/", 1)[-1]:
                self._send_bytes(HTTPStatus.NOT_FOUND, f"not found: {path}\n".encode(), "text/plain; charset=utf-8",
                                 send_body=send_body)
                return
            target = self.dist / "index.html"
        cache = IMMUTABLE_CACHE if path.startswith(IMMUTABLE_PREFIX) else REVALIDATE_CACHE
        self._send_file(target, cache, send_body)

    def _resolve(self, path: str) -> Path | None:
        """The file under dist for a URL path, or None (also for anything outside dist)."""
        relative = path.lstrip("/")
        if not relative:
            return None
        candidate = (self.dist / relative).resolve()
        if not candidate.is_relative_to(self.dist):
            return None
        if candidate.is_dir():
            candidate = candidate / "index.html"
        return candidate if candidate.is_file() else None

    def _send_file(self, target: Path, cache: str, send_body: bool) -> None:
        try:
            handle = target.open("rb")
        except OSError:
            self._send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", send_body=send_body)
            return
        with handle:
            stat = os.fstat(handle.fileno())
            etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
            headers = {"Cache-Control": cache, "ETag": etag,
                       "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}
            if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
                self.send_response(HTTPStatus.NOT_MODIFIED)
                for name, value in {**headers, **ISOLATION_HEADERS}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type(target))
            self.send_header("Content-Length", str(stat.st_size))
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in {**headers, **ISOLATION_HEADERS}.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                try:
                    shutil.copyfileobj(handle, self.wfile, 256 * 1024)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser went away (page reload): nothing to do

    def _send_bytes(self, status: HTTPStatus, body: bytes, ctype: str, cache: str = REVALIDATE_CACHE,
                    send_body: bool = True, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in {**ISOLATION_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)
