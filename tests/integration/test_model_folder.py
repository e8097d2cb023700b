"""A user's model, as a user brings it: a model made here (not a built-in: RGB, normalised outside
the module, logits out), saved as torch.export, TorchScript and a state_dict, made into a model
folder with `model init`, checked with `model check`, and run through the commands and paths,
with the user's own numbers (softmax of the module on normalised pixels) everywhere."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from marcelle_torch.processes import cli_argv

LABELS = ["circle", "square", "triangle"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZE = 24
USER_PACKAGE = """
import torch


class Shapes(torch.nn.Module):
    \"\"\"An RGB classifier trained on normalised images; answers logits.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.head = torch.nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))
"""


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's package (for the state_dict's module class), the trained module and its files."""
    root = tmp_path_factory.mktemp("user")
    (root / "shapes_user.py").write_text(textwrap.dedent(USER_PACKAGE))
    sys.path.insert(0, str(root))
    try:
        import shapes_user
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(7)
    module = shapes_user.Shapes().eval()
    example = torch.rand(2, 3, SIZE, SIZE)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    torch.export.save(program, root / "shapes.pt2")
    # A common slip: exported without a dynamic batch (only batches of 2 then run).
    torch.export.save(torch.export.export(module, (example,)), root / "fixed.pt2")
    torch.jit.script(module).save(str(root / "shapes.pt"))
    torch.save(module.state_dict(), root / "shapes.pth")
    return {"root": root, "module": module}


def run(*args: str, pythonpath: Path | None = None, cache: Path | None = None, timeout: float = 600):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    if cache:
        env["MARCELLE_TORCH_CACHE"] = str(cache)
    return subprocess.run([*cli_argv(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def png_b64(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def users_numbers(module, b64: str) -> list[float]:
    """What the user computes: their module on normalised [0,1] pixels, then softmax."""
    image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    assert image.size == (SIZE, SIZE), "the user's numbers are on the model's own size (no resizing)"
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(module(x), dim=1)[0].tolist()


def make_folder(user, tmp_path, weights: str, module: str | None = None) -> Path:
    out = tmp_path / f"folder-{weights.replace('.', '-')}"
    args = ["model", "init", user["root"] / weights, "--name", "shapes", "--labels", ",".join(LABELS)]
    args += ["--input", f"image:{SIZE}x{SIZE}x3", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    args += ["--output", "logits", "--out", out] + (["--module", module] if module else [])
    done = run(*args, pythonpath=user["root"])
    assert done.returncode == 0, done.stderr
    assert (out / "marcelle-model.yaml").is_file() and "next: marcelle-torch model check" in done.stdout
    return out


@pytest.mark.parametrize(
    "weights, module", [("shapes.pt2", None), ("shapes.pt", None), ("shapes.pth", "shapes_user:Shapes")]
)
def test_a_saved_model_becomes_a_folder_that_every_runtime_runs_with_the_users_numbers(user, tmp_path, weights, module):
    folder = make_folder(user, tmp_path, weights, module)
    checked = run("model", "check", folder, pythonpath=user["root"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "numerical parity" in checked.stdout and "ready for the three paths" in checked.stdout, checked.stdout

    # The in-process path (Serve's and the worker's decode and postprocess).
    image = tmp_path / "drawn.png"
    b64 = png_b64(3)
    image.write_bytes(base64.b64decode(b64))
    predicted = run("predict", folder, image, pythonpath=user["root"])
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout.strip().splitlines()[-1])
    expected = users_numbers(user["module"], b64)
    assert [answer["confidences"][label] for label in LABELS] == pytest.approx(expected, abs=1e-5)
    assert answer["label"] == LABELS[int(np.argmax(expected))]

    # The browser's graph: normalisation and softmax inside it, fed [0,1] pixels.
    bundle = tmp_path / "bundle"
    exported = run("export-onnx", folder, "--out", bundle, pythonpath=user["root"])
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["labels"] == LABELS
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    x = (np.asarray(pixels, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    probabilities = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    assert probabilities.tolist() == pytest.approx(expected, abs=1e-4)


def manifest_of(folder: Path) -> dict:
    return yaml.safe_load((folder / "marcelle-model.yaml").read_text())


BAD_FOLDERS = [
    # (what, change to the manifest, words of the error)
    ("an unknown key", lambda m: m.update(colour="blue"), "unknown key 'colour'"),
    ("a missing key", lambda m: m.pop("labels"), "missing key 'labels'"),
    ("a bad name", lambda m: m.update(name="Shapes!"), "name 'Shapes!'"),
    ("weights that do not load", lambda m: m.update(weights="broken.pt2"), "weights broken.pt2 do not load"),
    ("a fixed batch", lambda m: m.update(weights="fixed.pt2"), "export it with a dynamic batch"),
    ("a state_dict without its module", lambda m: m.update(weights="labels.txt"), "needs `module:"),
    ("a missing weights file", lambda m: m.update(weights="nope.pt2"), "weights file 'nope.pt2' not found"),
    ("an output width that is not the labels'", lambda m: m.update(labels=["a", "b"]), "labels has 2"),
    ("probabilities that are logits", lambda m: m.update(output="probabilities"), "rows sum to"),
    ("a wrong sha256", lambda m: m.update(sha256="0" * 64), "sha256 does not match"),
    ("an unknown output", lambda m: m.update(output="scores"), "output must be one of"),
    ("a non-square image", lambda m: m["input"].update(size=[SIZE, SIZE * 2]), "square"),
    ("a mean per channel missing", lambda m: m["input"].update(mean=[0.5]), "input.mean must be 3"),
    ("a generation task", lambda m: m.update(task="generation"), "classification"),
]


@pytest.mark.parametrize("what, change, words", BAD_FOLDERS, ids=[b[0] for b in BAD_FOLDERS])
def test_each_mistake_in_a_folder_is_one_line_that_names_it(user, tmp_path_factory, what, change, words):
    folder = tmp_path_factory.mktemp("bad") / "shapes"
    folder.mkdir()
    (folder / "shapes.pt2").write_bytes((user["root"] / "shapes.pt2").read_bytes())
    (folder / "broken.pt2").write_bytes(b"not a torch.export archive")
    (folder / "fixed.pt2").write_bytes((user["root"] / "fixed.pt2").read_bytes())
    (folder / "labels.txt").write_text("\n".join(LABELS))
    manifest = {
        "name": "shapes",
        "task": "classification",
        "weights": "shapes.pt2",
        "labels": list(LABELS),
        "input": {"kind": "image", "size": [SIZE, SIZE], "channels": 3, "mean": MEAN, "std": STD},
        "output": "logits",
    }
    change(manifest)
    (folder / "marcelle-model.yaml").write_text(yaml.safe_dump(manifest))
    done = run("info", folder)
    assert done.returncode == 2, (what, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marcelle-torch info: error: "), done.stderr
    assert words in lines[0], (what, lines[0])


def test_init_leaves_nothing_when_the_model_is_refused(user, tmp_path):
    out = tmp_path / "refused"
    done = run(
        "model", "init", user["root"] / "shapes.pt2", "--name", "shapes", "--labels", "a,b",
        "--input", f"image:{SIZE}x{SIZE}x3", "--output", "logits", "--out", out,
    )  # fmt: skip
    assert done.returncode == 2 and "labels has 2" in done.stderr, done.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


@pytest.fixture
def archive(user, tmp_path):
    folder = make_folder(user, tmp_path, "shapes.pt2")
    path = tmp_path / "shapes.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="shapes")
    return path


@pytest.fixture
def http_root(tmp_path):
    """A file server on loopback (the project's own test host)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_archive_and_a_url_checked_by_sha256_are_models_too(archive, http_root, tmp_path):
    import hashlib

    cache = tmp_path / "cache"
    info = run("info", archive, cache=cache)
    assert info.returncode == 0 and json.loads(info.stdout)["labels"] == LABELS, info.stderr

    root, url = http_root
    (root / "shapes.tar.gz").write_bytes(archive.read_bytes())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    wrong = run("info", f"{url}/shapes.tar.gz#sha256={'0' * 64}", cache=cache)
    assert wrong.returncode == 2 and "sha256" in wrong.stderr, wrong.stderr
    assert not (cache / "archives").exists() or not any((cache / "archives").iterdir()), "a refused download was kept"
    unsigned = run("info", f"{url}/shapes.tar.gz", cache=cache)
    assert unsigned.returncode == 2 and "#sha256=" in unsigned.stderr, unsigned.stderr
    right = run("info", f"{url}/shapes.tar.gz#sha256={digest}", cache=cache)
    assert right.returncode == 0 and json.loads(right.stdout)["name"] == "shapes", right.stderr
    assert [p.name for p in (cache / "archives").iterdir()] == [f"{digest}.tar.gz"]


@pytest.mark.ray
def test_ray_serve_serves_a_folder_with_the_users_numbers(user, tmp_path, start_serve):
    folder = make_folder(user, tmp_path, "shapes.pt2")
    server = start_serve(tmp_path / "serve.log", ["--model", str(folder)])
    try:
        import httpx

        b64 = png_b64(11)
        reply = httpx.post(f"{server.url}/v1/models/shapes:predict", json={"instances": [{"b64": b64}]}, timeout=120)
        assert reply.status_code == 200, reply.text
        got = reply.json()["predictions"][0]["confidences"]
        assert [got[label] for label in LABELS] == pytest.approx(users_numbers(user["module"], b64), abs=1e-5)
        meta = httpx.get(f"{server.url}/v1/models/shapes", timeout=60).json()
        assert meta["labels"] == LABELS and meta["input"]["channels"] == 3
    finally:
        server.stop()


@pytest.mark.backend
def test_a_run_of_a_folders_model_goes_through_the_backend(user, tmp_path, make_backend, make_worker, connect):
    folder = make_folder(user, tmp_path, "shapes.pt")
    backend = make_backend()
    make_worker(backend.url, "folder-worker", "--models", str(folder))
    client = connect(backend.url)
    b64 = png_b64(5)
    run_doc = client.create("runs", {"model": "shapes", "input": {"b64": b64}})
    import time

    deadline = time.monotonic() + 120
    while (doc := client.get("runs", run_doc["_id"]))["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert doc["status"] == "succeeded", doc
    got = doc["result"]["confidences"]
    assert [got[label] for label in LABELS] == pytest.approx(users_numbers(user["module"], b64), abs=1e-5)


def test_the_readmes_three_commands_run_verbatim(tmp_path):
    """The "Your model" section's commands, as a user pastes them, on a 64x64 RGB model saved
    as shapes.pt2 in the current directory (the third, up --model, runs in tests/e2e)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Your model", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [re.sub(r"\s*#.*$", "", line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [c.split()[:3] for c in commands] == [
        ["marcelle-torch", "model", "init"],
        ["marcelle-torch", "model", "check"],
        ["marcelle-torch", "up", "--model"],
    ]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    net(torch.zeros(1, 3, 64, 64))
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (torch.rand(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "shapes.pt2")
    for command in commands[:2]:
        argv = shlex.split(command)
        done = subprocess.run([*cli_argv(), *argv[1:]], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "ready for the three paths" in done.stdout
