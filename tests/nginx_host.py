"""The web app image's nginx (services/frontend/nginx.conf, its template rendered as the image's
envsubst step does) run by the real nginx binary on a free loopback port, for the tests that
need it in front of the app's files, Ray Serve or the backend."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from marcelle_torch.processes import free_port

REPO = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextlib.contextmanager
def run_nginx(
    workdir: Path, html: Path, serve_upstream: str, backend_upstream: str, store: Path | None = None
) -> Iterator[str]:
    """nginx serving ``html`` and proxying ``/serve/`` and ``/backend/`` to those host:ports; the URL.
    ``store``: the model store whose published ONNX bundles it serves first (default: none there)."""
    assert NGINX is not None, "no nginx binary (Debian's nginx-light: make system-deps)"
    port = free_port()
    env = {
        "NGINX_PORT": str(port),
        "SERVE_UPSTREAM": serve_upstream,
        "BACKEND_UPSTREAM": backend_upstream,
        "NGINX_LOCAL_RESOLVERS": "127.0.0.1",
        "MARCELLE_TORCH_STORE": str(store or workdir / "no-store"),
    }
    template = (REPO / "services" / "frontend" / "nginx.conf").read_text()
    # envsubst of the defined variables only, as the image's 20-envsubst-on-templates.sh does.
    server = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), template)
    server = server.replace("root /usr/share/nginx/html;", f"root {html};")
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's folders (0700)
    (workdir / "logs").mkdir(exist_ok=True)
    temp_paths = "".join(
        f"  {k}_temp_path {workdir}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (workdir / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/logs/error.log;\n"
        f"events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n"
        f"  include /etc/nginx/mime.types;\n{temp_paths}{server}\n}}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited: {proc.stderr.read().decode()}")
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
