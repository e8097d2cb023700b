"""The npm package as a Marcelle developer uses it: packed, installed into a fresh Marcelle app.

`npm pack` makes the tarball of packages/marcelle-torch; a new app laid out like Marcelle's app
template (package.json, index.html, src/index.js, built by Vite) installs it with its peers,
takes the README's snippet as its src/index.js, is built, and is served by the local stack
(`start_stack` with the app as its web app). In real Chromium: a drawn digit is predicted
through Ray Serve and in the browser (ONNX), and a backend run shows its progress and ends.

npm's cache is kept in .cache/npm, so that later runs install from it; the only network used
is the npm registry, and only for what the cache lacks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.backend]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "packages" / "marcelle-torch"
NPM_CACHE = ROOT / ".cache" / "npm"
BUNDLE = ROOT / "services" / "frontend" / "public" / "onnx" / "digits"
# The snippet's addresses (README), replaced by the test stack's.
SERVE_URL = "http://127.0.0.1:8000"
BACKEND_URL = "http://127.0.0.1:3030"

INDEX_HTML = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="UTF-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1.0" />
    <title>My PyTorch models</title>
  </head>
  <body>
    <script type="module" src="/src/index.js"></script>
  </body>
</html>
"""


def readme_snippet() -> str:
    """The first ```js block of the README's "Use it from your Marcelle app" section."""
    section = (ROOT / "README.md").read_text().split("## Use it from your Marcelle app", 1)[1]
    snippet = section.split("```js\n", 1)[1].split("```", 1)[0]
    assert len(snippet.splitlines()) <= 20, "the README's snippet should stay short"
    return snippet


def locked_version(name: str) -> str:
    """The version the project's own app is built and tested with (the workspace's lock)."""
    lock = json.loads((ROOT / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{name}"]["version"]


def npm(*args: str, cwd: Path, timeout: float = 900) -> str:
    env = {**os.environ, "npm_config_cache": str(NPM_CACHE), "npm_config_update_notifier": "false"}
    proc = subprocess.run(["npm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"npm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def make_app(app: Path, tarball: Path, snippet: str) -> None:
    """A Marcelle app as Marcelle's template lays one out, with the package and its peers."""
    (app / "src").mkdir(parents=True)
    (app / "public" / "onnx").mkdir(parents=True)
    package = {
        "name": "my-marcelle-app",
        "private": True,
        "version": "0.0.1",
        "type": "module",
        "scripts": {"dev": "vite", "build": "vite build", "preview": "vite preview"},
        "dependencies": {
            "@marcellejs/core": locked_version("@marcellejs/core"),
            "marcelle-torch": f"file:{tarball}",
            "onnxruntime-web": locked_version("onnxruntime-web"),
        },
        "devDependencies": {"vite": locked_version("vite")},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    (app / "index.html").write_text(INDEX_HTML)
    (app / "src" / "index.js").write_text(snippet)
    shutil.copytree(BUNDLE, app / "public" / "onnx" / "digits")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed")
    out = tmp_path_factory.mktemp("pack")
    npm("pack", str(PACKAGE), "--pack-destination", str(out), cwd=out)
    (tarball,) = out.glob("marcelle-torch-*.tgz")
    listing = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True, check=True).stdout
    # What a user gets: the sources, the declarations, the README; no tests, no node_modules.
    assert "package/src/index.js" in listing and "package/types/index.d.ts" in listing
    assert "package/README.md" in listing
    assert "package/test/" not in listing and "node_modules" not in listing
    return tarball


PROGRESS_WATCHER = """() => {
    window.__progress = [];
    const box = document.querySelector('[data-testid=run-progress]');
    new MutationObserver(() => window.__progress.push(Number(box.dataset.progress)))
        .observe(box, { attributes: true, attributeFilter: ['data-progress'] });
}"""


@pytest.mark.timeout(1800)  # npm install and a Vite build, then a whole local stack on a shared machine
def test_a_fresh_marcelle_app_uses_the_three_ways(tmp_path, packed, page, console_errors, drawing_input):
    from marcelle_torch.models import get_spec, resolve_weights
    from marcelle_torch.processes import free_port
    from marcelle_torch.stack.up import StackOptions, start_stack

    if not (BUNDLE / "model.onnx").is_file():
        pytest.fail(f"no ONNX bundle at {BUNDLE}: run `make webapp`")
    for name in ("digits", "digits-generator"):
        resolve_weights(get_spec(name), train_if_missing=True)

    serve_port, backend_port = free_port(), free_port()
    snippet = readme_snippet()
    assert SERVE_URL in snippet and BACKEND_URL in snippet
    snippet = snippet.replace(SERVE_URL, f"http://127.0.0.1:{serve_port}")
    snippet = snippet.replace(BACKEND_URL, f"http://127.0.0.1:{backend_port}")

    app = tmp_path / "my-marcelle-app"
    make_app(app, packed, snippet)
    npm("install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", cwd=app)
    installed = app / "node_modules" / "marcelle-torch"
    assert installed.is_dir() and not installed.is_symlink(), "the tarball is installed, not a link"
    npm("run", "build", cwd=app)
    dist = app / "dist"
    assert (dist / "index.html").is_file() and (dist / "onnx" / "digits" / "model.onnx").is_file()
    assert any(dist.glob("assets/*.wasm")), "onnxruntime-web's .wasm is part of the build"

    options = StackOptions(
        workdir=tmp_path / "stack",
        webapp_port=0,
        serve_port=serve_port,
        backend_port=backend_port,
        prometheus_port=0,
        dist_dir=dist,
    )
    stack = start_stack(options, say=lambda msg: print(f"[stack] {msg}", flush=True))
    missing = []  # what the app asked for and did not get (a fresh app has no favicon.ico)
    page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
    try:
        page.goto(stack.urls["webapp"])
        page.wait_for_selector("[data-testid=ray-model-status][data-status=ready]")
        page.wait_for_selector("[data-testid=onnx-model-status][data-status=ready]")

        drawing_input.draw_digit("7")
        served = page.locator("[data-testid=ray-model-prediction]")
        in_browser = page.locator("[data-testid=onnx-model-prediction]")
        served.wait_for()
        in_browser.wait_for()
        # The same model, two ways: the same label for the same drawing.
        assert served.get_attribute("data-label") == in_browser.get_attribute("data-label") == "7"

        # Every progress value the view shows, recorded by the page itself as it changes (polling
        # from here could miss a short run's steps on a loaded machine).
        page.evaluate(PROGRESS_WATCHER)
        page.get_by_role("button", name="Generate a 3").click()
        page.wait_for_selector("[data-testid=run-status][data-status=succeeded]")
        seen = page.evaluate("window.__progress")
        assert any(0 < p < 1 for p in seen), f"no intermediate progress shown: {sorted(seen)}"
        # The result's image, in Marcelle's imageDisplay (a canvas at the image's own size).
        page.wait_for_selector("[data-testid=run-image][data-drawn=result]")
        assert page.locator("[data-testid=run-image] canvas").evaluate("c => c.width") > 0
        assert page.locator("[data-testid=run-progress]").get_attribute("data-progress") == "1"
        item = page.locator("[data-testid=runs-history-item]").first
        assert item.get_attribute("data-status") == "succeeded"
        assert re.search(r"digits-generator: done → 3", item.inner_text())
        assert [url for url in missing if not url.endswith("/favicon.ico")] == []
        assert [e for e in console_errors if "Failed to load resource" not in e] == []
    finally:
        page.goto("about:blank")  # no reconnection attempts to the backend while it stops
        stack.stop()
