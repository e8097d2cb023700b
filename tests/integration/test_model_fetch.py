"""`marcelle-torch model fetch`: what a Kubernetes init container runs before a Pod serves a
model given as a chart value. A folder, an archive or a URL checked by its sha256 is loaded as
every path loads it, then copied to --out in one rename; a refused model is one line naming it
(exit 2) and leaves nothing at --out, nor in the cache for a download that failed its check."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import torch
import yaml

from marcelle_torch.models.folder import write_folder
from marcelle_torch.processes import cli_argv

LABELS = "circle,square,triangle"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A user's model (not a built-in): RGB, normalised outside the module, logits out."""
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    net(torch.zeros(1, 3, 16, 16))
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, root / "shapes.pt2")
    out = root / "shapes"
    write_folder(
        root / "shapes.pt2",
        out,
        name="shapes",
        labels=LABELS,
        input_text="image:16x16x3",
        output="logits",
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    return out


@pytest.fixture(scope="module")
def archive(folder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "shapes.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="shapes")
    return path


@pytest.fixture
def url(archive, tmp_path):
    """The archive served by a file server on loopback; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "shapes.tar.gz").write_bytes(archive.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/shapes.tar.gz"
    server.shutdown()


def fetch(*args, cache: Path):
    env = dict(os.environ, MARCELLE_TORCH_CACHE=str(cache))
    return subprocess.run(
        [*cli_argv(), "model", "fetch", *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )


def one_error_line(done) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marcelle-torch model: error: "), done.stderr
    return lines[0]


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files
    )


def test_a_folder_is_checked_and_copied(folder, tmp_path):
    out = tmp_path / "models" / "shapes"
    done = fetch(folder, "--out", out, "--name", "shapes", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert f"shapes: {folder} -> {out}/ (3 labels" in done.stdout, done.stdout
    assert same_tree(folder, out)
    assert [p.name for p in out.parent.iterdir()] == ["shapes"], "a temporary folder was left beside it"
    # Again (an init container run twice in one Pod): the copy is replaced, not refused.
    again = fetch(folder, "--out", out, cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert same_tree(folder, out) and [p.name for p in out.parent.iterdir()] == ["shapes"]


def test_a_url_is_fetched_only_with_its_sha256(archive, url, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "models" / "shapes"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    wrong = fetch(f"{url}#sha256={'0' * 64}", "--out", out, "--name", "shapes", cache=cache)
    line = one_error_line(wrong)
    assert f"model shapes ({url}#sha256={'0' * 64}): " in line and "sha256" in line and digest in line, line
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), "something left at --out"
    left = [p for p in cache.rglob("*") if p.is_file()]
    assert not left, f"a download refused by its sha256 was kept: {left}"

    right = fetch(f"{url}#sha256={digest}", "--out", out, "--name", "shapes", cache=cache)
    assert right.returncode == 0, right.stderr
    assert (out / "marcelle-model.yaml").is_file() and (out / "shapes.pt2").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["shapes"]


def test_a_broken_manifest_is_one_line_and_leaves_nothing(folder, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = yaml.safe_load((folder / "marcelle-model.yaml").read_text())
    manifest["labels"] = ["a", "b"]  # the module answers 3 values
    (broken / "marcelle-model.yaml").write_text(yaml.safe_dump(manifest))
    out = tmp_path / "models" / "shapes"
    line = one_error_line(fetch(broken, "--out", out, "--name", "shapes", cache=tmp_path / "cache"))
    assert f"model shapes ({broken}): " in line and "labels has 2" in line, line
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_model_of_another_name_is_refused(folder, tmp_path):
    out = tmp_path / "models" / "circles"
    line = one_error_line(fetch(folder, "--out", out, "--name", "circles", cache=tmp_path / "cache"))
    assert "model circles" in line and "names the model 'shapes', not 'circles'" in line, line
    assert not out.exists()


def test_out_that_is_not_a_model_folder_is_never_replaced(folder, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_error_line(fetch(folder, "--out", out, cache=tmp_path / "cache"))
    assert "is not a model folder" in line, line
    assert (out / "notes.txt").read_text() == "mine"
