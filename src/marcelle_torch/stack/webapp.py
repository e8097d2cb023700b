"""The built Marcelle web app (``services/frontend/dist``), served locally.

Starlette's ``StaticFiles`` serves the Vite build and one route serves ``/config.json`` from a
dict given at start, so one build runs against any Serve / backend URLs. Marcelle's dashboard
routes in the URL's hash, so every page is ``/`` and a path that is not a file is a 404 (no
single-page fallback). It runs under uvicorn in a thread of the calling process (``marcelle-torch
up``, the tests); in Kubernetes nginx serves the same files with the same headers (its CSP's
connect-src is the page's own origin, where it proxies Serve and the backend).

Build the app first::

    npm ci && npm run build -w services/frontend     # (what `make webapp` runs; one npm workspace)
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import MarcelleTorchError

if TYPE_CHECKING:  # Starlette is imported when the server starts (it comes with the [serve] extra)
    from os import PathLike as _PathLike

    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    PathLike = str | _PathLike[str]

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

# What the page may load, and no framing or MIME sniffing, also on every response (a worker's
# policy is its script's response's). The twin of these headers is services/frontend/nginx.conf,
# whose connect-src is 'self' alone (Serve and the backend are under /serve/ and /backend/ there);
# tests/unit/test_webapp_server.py checks that the two agree.
CSP_DIRECTIVES = {
    "default-src": "'self'",
    # onnxruntime-web compiles its WebAssembly; no JavaScript eval. Its worker threads run the
    # app's own .mjs (worker-src falls back to script-src).
    "script-src": "'self' 'wasm-unsafe-eval'",
    # Inline styles are needed by what Marcelle bundles: Svelte's transitions add a <style>
    # element, vidstack parses a template with a style attribute when it loads, and Marcelle's
    # components (and the app's HTML strings) set style attributes.
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data: blob:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

# The config keys whose URLs the app calls: the app's default for a missing key
# (services/frontend/src/config.js, DEFAULT_CONFIG), and whether it opens a websocket there.
CONNECT_KEYS: dict[str, tuple[str | list[str] | None, bool]] = {
    "serveUrl": ("http://127.0.0.1:8000", False),
    "backendUrl": ("http://127.0.0.1:3030", True),  # socket.io
    "onnxBundle": (None, False),
    "onnxBundles": ([], False),  # a list of bundle folders
}


def connect_sources(config: dict) -> list[str]:
    """The other origins the app calls with ``config``; a relative URL is the page's own ('self')."""
    sources: list[str] = []
    for key, (default, websocket) in CONNECT_KEYS.items():
        value = config.get(key, default)
        for item in value if isinstance(value, list) else [value]:
            url = urlsplit(item) if isinstance(item, str) else None
            if url is None or url.scheme not in ("http", "https") or not url.netloc:
                continue
            schemes = [url.scheme, "wss" if url.scheme == "https" else "ws"] if websocket else [url.scheme]
            sources += [origin for scheme in schemes if (origin := f"{scheme}://{url.netloc}") not in sources]
    return sources


def security_headers(connect: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The headers on every response, the CSP's connect-src being 'self' and ``connect``."""
    directives = {**CSP_DIRECTIVES, "connect-src": " ".join([CSP_DIRECTIVES["connect-src"], *connect])}
    csp = "; ".join(f"{name} {value}" for name, value in directives.items())
    return {**ISOLATION_HEADERS, **SECURITY_HEADERS, "Content-Security-Policy": csp}


class WebappNotBuilt(MarcelleTorchError):
    status = 500
    code = "missing_build"


class WebappError(MarcelleTorchError):
    status = 500
    code = "webapp"


def content_type(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in MIME_TYPES:
        return MIME_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(str(path))
    return guessed or "application/octet-stream"


def check_dist(dist_dir: str | Path) -> Path:
    """The resolved build folder; WebappNotBuilt (one line, with the fix) when it is not built."""
    dist = Path(dist_dir).expanduser().resolve()
    if not (dist / "index.html").is_file():
        raise WebappNotBuilt(
            f"the web app is not built: {dist / 'index.html'} is missing; run `make webapp` first "
            "(npm ci && npm run build -w services/frontend)"
        )
    return dist


def start_webapp(
    dist_dir: str | Path,
    config: dict,
    host: str = "127.0.0.1",
    port: int = 0,
    bundles: dict[str, Path] | None = None,
    store: str | Path | None = None,
) -> tuple[str, Callable[[], None]]:
    """Serve ``dist_dir`` and ``/config.json`` (= ``config``) on ``host:port`` in a daemon thread;
    ``bundles`` (``{name: folder}``) are ONNX bundles made at start, served at ``/onnx/<name>/``
    unless the model ``store`` publishes a version of that model with a bundle: then that one.

    ``port=0`` picks a free port. Returns ``(url, stop)``; ``stop()`` closes the server and
    may be called more than once.
    """
    import uvicorn

    dist = check_dist(dist_dir)
    try:
        config_body = json.dumps(config, indent=2).encode()
    except (TypeError, ValueError) as exc:
        raise WebappError(f"the web app config is not JSON-serialisable: {exc}") from None
    headers = security_headers(connect_sources(config))

    # Bound here, not by uvicorn: a port in use is one clear error now, and port 0's pick is known.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise WebappError(f"cannot serve the web app on {host}:{port}: {exc.strerror or exc}") from None
    bound_port = sock.getsockname()[1]

    server = uvicorn.Server(
        uvicorn.Config(
            webapp_asgi(dist, config_body, headers, bundles, store),
            log_config=None,  # leave the process's logging as it is
            log_level="warning",
            access_log=False,
            # A browser's keep-alive connections must not hold stop() up.
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"webapp-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise WebappError(f"the web app server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    url = f"http://{_url_host(host)}:{bound_port}"
    log.info("web app %s on %s", dist, url)

    lock = threading.Lock()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with lock:
            if stopped:
                return
            stopped = True
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return url, stop


def webapp_asgi(
    dist: Path,
    config_body: bytes,
    headers: dict[str, str],
    bundles: dict[str, Path] | None = None,
    store: str | Path | None = None,
) -> ASGIApp:
    """The ASGI app: ``/config.json``, the ``bundles`` at ``/onnx/<name>/`` (the store's published
    version's bundle where there is one), and the files of ``dist``, every answer with ``headers``
    (``security_headers``) and the cache headers."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from ..models.store import ONNX, ModelStore

    class Files(StaticFiles):
        def file_response(
            self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
        ) -> Response:
            response = super().file_response(full_path, stat_result, scope, status_code)
            if response.status_code == 200:
                response.headers["content-type"] = content_type(full_path)
            return response

    model_store = ModelStore(store)

    class Bundle(Files):
        """One model's bundle: the published version's (found per request, one readlink), else the
        one made at start. Revalidated by ETag, so a page that reloads gets a new publish at once."""

        def __init__(self, name: str, folder: Path):
            super().__init__(directory=folder)
            self.name, self.folder = name, Path(folder)

        def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
            published = model_store.published_dir(self.name)
            root = (
                published / ONNX
                if published is not None and (published / ONNX / "model.json").is_file()
                else self.folder
            )
            root = root.resolve()
            full = (root / path).resolve()
            if full != root and root not in full.parents:
                return "", None
            try:
                return str(full), os.stat(full)
            except (FileNotFoundError, NotADirectoryError):
                return "", None

    # The app's own bundles (built into dist/onnx/) and those made at start: each follows the store.
    built = dist / "onnx"
    followed = {p.name: p for p in sorted(built.iterdir()) if p.is_dir()} if built.is_dir() else {}
    followed.update(bundles or {})

    async def config_json(request: Request) -> Response:
        return Response(config_body, media_type="application/json", headers={"Cache-Control": "no-store"})

    app = Starlette(
        routes=[
            Route("/config.json", config_json, methods=["GET", "HEAD"]),
            *(Mount(f"/onnx/{name}", Bundle(name, folder)) for name, folder in followed.items()),
            Mount("/", Files(directory=dist, html=True)),
        ]
    )
    return _headers(app, headers)


def _headers(app: ASGIApp, security: dict[str, str]) -> ASGIApp:
    """Adds ``security`` and the cache headers to every response (a pure ASGI middleware)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        path = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                names = {k.lower() for k, _ in headers}
                added = dict(security)
                if b"cache-control" not in names:
                    cache = IMMUTABLE_CACHE if path.startswith(IMMUTABLE_PREFIX) else REVALIDATE_CACHE
                    added["Cache-Control"] = cache
                if message["status"] == 405:
                    added["Allow"] = "GET, HEAD"
                headers += [(k.lower().encode(), v.encode()) for k, v in added.items()]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
