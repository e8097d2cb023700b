"""The package installed the way the images install it: `pip install .` (no extras, not
editable) into a fresh Python 3.11 venv, from a copy of exactly what the Dockerfiles COPY
(pyproject.toml, README.md, src/). Every console command's --help, every module's import, the
health-probe sidecar of the chart's worker Deployment and a worker start must work there, so a
runtime import declared only under an extra (e.g. httpx under [test]) fails here, not in an
image build.

A plain install has no Ray (the worker image must not carry it): the Serve modules and the
`serve`/`up` commands need the [serve] extra and say so in one line; a second venv with
[serve] imports those modules too.

The venvs are installed with constraints.txt (the exact versions the images use) and cached
under .cache/install-venv/, keyed by the hash of pyproject.toml and constraints.txt (the
dependency set); the package itself is reinstalled (--no-deps) from the current sources each
session, so the code under test is never stale. A first install takes a few minutes (torch,
onnx, ray wheels), later sessions seconds.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
CONSTRAINTS = REPO / "constraints.txt"
PYTHON = os.environ.get("INSTALL_TEST_PYTHON", "python3.11")
INSTALL_TIMEOUT_S = 1500
# Modules that import Ray at module top: they need the [serve] extra.
# Ray Serve's application and the code only it runs; the packages of the [serve] extra they need.
NEEDS_SERVE_EXTRA = {
    "marcelle_torch.serving.app",
    "marcelle_torch.serving.api",
    "marcelle_torch.serving.options",
    "marcelle_torch.serving.v2",
}
SERVE_EXTRA_PACKAGES = ("ray", "fastapi", "pydantic")
RAY_HINT = "marcelle-torch[serve]"


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _constraint_pins() -> dict[str, str]:
    """constraints.txt: the exact versions the images, CI and `make` install."""
    lines = CONSTRAINTS.read_text().splitlines()
    return {name.lower(): version for name, version in (line.split("==") for line in lines if "==" in line)}


def _copy_sources(dest: Path) -> Path:
    """What the Dockerfiles copy into the build (`COPY pyproject.toml README.md` + `COPY src`)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(PYPROJECT, dest / "pyproject.toml")
    shutil.copy2(REPO / "README.md", dest / "README.md")
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def _pip(venv: Path, *args: str, timeout: float = INSTALL_TIMEOUT_S) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"`pip install {' '.join(args)}` failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def _venv(tmp_path_factory, extras: str) -> Path:
    if not shutil.which(PYTHON):
        pytest.fail(f"the install test needs {PYTHON} on PATH (apt-get install python3.11, or set PYTHON)")
    key = hashlib.sha256(PYPROJECT.read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()[:16]
    venv = REPO / ".cache" / "install-venv" / f"{extras or 'plain'}-{key}"
    src = _copy_sources(tmp_path_factory.mktemp("src") / "marcelle-torch")
    target = f"{src}[{extras}]" if extras else str(src)
    ready = venv / ".installed"
    if not ready.is_file():
        for stale in venv.parent.glob(f"{extras or 'plain'}-*"):  # venvs of earlier dependency sets
            shutil.rmtree(stale, ignore_errors=True)
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)
        started = time.monotonic()
        # As the images install it: the exact versions of constraints.txt.
        _pip(venv, "-c", str(CONSTRAINTS), target)
        print(f"fresh install of {target} took {time.monotonic() - started:.0f}s", flush=True)
        ready.write_text(key)
    else:
        # Same dependency set: only the package's own code is refreshed.
        _pip(venv, "--no-deps", "--force-reinstall", target)
    return venv


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return _venv(tmp_path_factory, "")


@pytest.fixture(scope="module")
def with_serve(tmp_path_factory) -> Path:
    return _venv(tmp_path_factory, "serve")


def _run(venv: Path, *cmd: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", **(env or {}))
    environ.pop("PYTHONPATH", None)
    environ.pop("VIRTUAL_ENV", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ, cwd=venv)


def _py(venv: Path, code: str, **kw) -> subprocess.CompletedProcess:
    return _run(venv, str(venv / "bin" / "python"), "-c", code, **kw)


def test_torch_is_the_pinned_cpu_build_and_ray_is_not_installed(plain):
    result = _py(
        plain,
        "import importlib.util, torch; print(torch.__version__); print(importlib.util.find_spec('ray') is not None)",
    )
    assert result.returncode == 0, result.stderr
    version, has_ray = result.stdout.split()
    pin = _constraint_pins()["torch"]
    assert version.split("+")[0] == pin, f"fresh venv got torch {version}, constraints.txt pins {pin}"
    assert has_ray == "False", "a plain install pulled Ray in: the worker image would carry it"


def _subcommands(venv: Path) -> list[str]:
    result = _py(
        venv,
        "import argparse, json; from marcelle_torch.cli import build_parser\n"
        "p = build_parser()\n"
        "sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))\n"
        "print(json.dumps(sorted(sub.choices)))",
    )
    assert result.returncode == 0, f"building the CLI failed in a plain install:\n{result.stderr[-2000:]}"
    return json.loads(result.stdout)


def test_every_console_command_and_subcommand_help(plain):
    scripts = _project()["scripts"]
    assert scripts, "pyproject declares no console scripts"
    subcommands = _subcommands(plain)
    assert {"serve", "worker", "up", "train", "export-onnx"} <= set(subcommands), subcommands
    for script in scripts:
        exe = str(plain / "bin" / script)
        for args in (["--help"], ["--version"], *([name, "--help"] for name in subcommands)):
            result = _run(plain, exe, *args)
            assert result.returncode == 0, (
                f"`{script} {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-2000:]}"
            )
            assert "Traceback" not in result.stderr and result.stdout.strip(), f"`{script} {' '.join(args)}`"


_IMPORT_ALL = """
import importlib, json, pkgutil, marcelle_torch
failed = {}
names = [m.name for m in pkgutil.walk_packages(marcelle_torch.__path__, "marcelle_torch.")]
for name in ["marcelle_torch", *names]:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"modules": names, "failed": failed}))
"""


def _import_all(venv: Path) -> tuple[list[str], dict[str, str]]:
    result = _py(venv, _IMPORT_ALL)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return data["modules"], data["failed"]


def test_every_module_imports_in_a_plain_install(plain):
    modules, failed = _import_all(plain)
    assert len(modules) > 20, modules
    assert set(failed) <= NEEDS_SERVE_EXTRA, f"modules that fail to import in a plain install: {failed}"
    for name, error in failed.items():
        missing = [f"ModuleNotFoundError: No module named '{p}'" for p in SERVE_EXTRA_PACKAGES]
        assert error in missing, f"{name}: {error}"


def test_serve_commands_name_the_extra_without_ray(plain):
    for args in (["serve", "--port", "0"], ["up", "--port", "0"]):
        result = _run(plain, str(plain / "bin" / "marcelle-torch"), *args, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, f"`marcelle-torch {args[0]}` without Ray: exit {result.returncode}: {lines}"
        assert len(lines) == 1 and RAY_HINT in lines[0], f"`marcelle-torch {args[0]}` without Ray said: {lines}"


def test_every_module_imports_with_the_serve_extra(with_serve):
    modules, failed = _import_all(with_serve)
    assert not failed, f"modules that fail to import with [serve]: {failed}"
    result = _py(with_serve, "import ray; print(ray.__version__)")
    pin = _constraint_pins()["ray"]
    assert result.stdout.strip() == pin


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_probe_sidecar_runs_from_a_plain_install(plain):
    """The chart's worker Deployment runs `python -m marcelle_torch.probe` in the
    worker image (charts/marcelle-torch/templates/worker-deployment.yaml)."""
    chart = (REPO / "charts" / "marcelle-torch" / "templates" / "worker-deployment.yaml").read_text()
    command = re.search(r"command: \[python, -m, ([\w.]+)\]", chart)
    assert command, "the chart's probe sidecar command changed: update this test"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = http.server.HTTPServer(("127.0.0.1", 0), _Ok)  # bound, never answering
    proc = subprocess.Popen(
        [
            str(plain / "bin" / "python"),
            "-m",
            command.group(1),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--timeout",
            "1",
            f"webapp=http://127.0.0.1:{server.server_port}/",
            f"backend=http://127.0.0.1:{closed.server_port}/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=plain,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"metrics on (http://[\d.:]+/metrics)", line)
        assert match, f"probe did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
        text = urllib.request.urlopen(match.group(1), timeout=30).read().decode()
        assert re.search(r'^probe_success\{target="webapp"[^}]*\} 1(\.0)?$', text, re.M), text
        assert re.search(r'^probe_success\{target="backend"[^}]*\} 0(\.0)?$', text, re.M), text
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()
        closed.server_close()


def test_worker_starts_without_ray_and_logs_its_weights_digest(plain, tmp_path):
    """`marcelle-torch worker` in a venv without Ray: loads its model, logs the weights' sha256
    (the same digest the ONNX bundle's manifest records) and waits for the backend."""
    from marcelle_torch.models import get_spec, resolve_weights
    from marcelle_torch.models.weights import sha256_of
    from marcelle_torch.stack.worker import start_worker

    cache = os.environ.get("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))
    digest = sha256_of(resolve_weights(get_spec("digits"), train_if_missing=True))
    worker = start_worker(
        f"http://127.0.0.1:{_closed_port()}",
        models=["digits"],
        command=[str(plain / "bin" / "marcelle-torch")],
        log_path=tmp_path / "worker.log",
        env={"MARCELLE_TORCH_CACHE": cache, "PATH": f"{plain / 'bin'}:{os.environ['PATH']}"},
        cwd=plain,
        wait=False,
    )
    try:
        # Nothing listens there: it retries, alive, and is not reported ready.
        worker.wait_until(lambda: "retrying" in worker.log_text(), 300, "retry the absent backend")
        seen = worker.log_text().splitlines()
        assert not worker.up(), seen
        assert any(f"sha256 {digest}" in line for line in seen), f"no weights digest {digest[:12]} logged: {seen}"
        assert any("model digits ready" in line for line in seen), seen
    finally:
        worker.stop(timeout=30)


def _version_in_sources() -> str:
    init = (REPO / "src" / "marcelle_torch" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', init, re.M).group(1)


def test_python_m_build_makes_a_wheel_and_an_sdist_that_install_and_predict(plain, tmp_path):
    """`python -m build` from the sources the images copy; the wheel, installed, answers
    `--version` with the package's version and predicts with a built-in model."""
    version = _version_in_sources()
    assert _project()["dynamic"] == ["version"], "the version is said once, in marcelle_torch.__version__"
    _pip(plain, "build>=1.2")
    src = _copy_sources(tmp_path / "marcelle-torch")
    out = tmp_path / "dist"
    python = str(plain / "bin" / "python")
    built = _run(plain, python, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(src), timeout=900)
    assert built.returncode == 0, f"python -m build failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}"
    (wheel,) = out.glob(f"marcelle_torch-{version}-py3-none-any.whl")
    (sdist,) = out.glob(f"marcelle_torch-{version}.tar.gz")
    assert sdist.stat().st_size > 0
    _pip(plain, "--no-deps", "--force-reinstall", str(wheel))

    exe = str(plain / "bin" / "marcelle-torch")
    shown = _run(plain, exe, "--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"marcelle-torch {version}", shown

    from PIL import Image, ImageDraw

    png = tmp_path / "one.png"
    image = Image.new("L", (128, 128), 255)
    ImageDraw.Draw(image).line([(64, 20), (64, 108)], fill=0, width=12)
    image.save(png)
    cache = os.environ.get("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))
    predicted = _run(plain, exe, "predict", "digits", str(png), env={"MARCELLE_TORCH_CACHE": cache}, timeout=900)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["label"] == "1", predicted.stdout
