"""Weights resolution: sha256-checked downloads (from a real local HTTP server), paths, cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest
import torch
from torch import nn

from marcelle_torch.errors import WeightsError
from marcelle_torch.models import ModelSpec, TensorInput, Weights, load_model, resolve_weights


@pytest.fixture
def http_dir(tmp_path):
    """A real http.server serving ``tmp_path/www``; yields (dir, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MARCELLE_TORCH_CACHE", str(tmp_path / "cache"))


def linear_spec(**weights) -> ModelSpec:
    return ModelSpec(
        name="lin",
        task="classification",
        build=lambda: nn.Linear(2, 2),
        input=TensorInput((2,)),
        labels=("a", "b"),
        weights=Weights(**weights),
    )


def saved_weights(path):
    torch.manual_seed(1)
    module = nn.Linear(2, 2)
    torch.save(module.state_dict(), path)
    return module, hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_checked_by_sha256_and_cached(http_dir):
    www, base = http_dir
    module, sha = saved_weights(www / "w.pt")
    spec = linear_spec(url=f"{base}/w.pt", sha256=sha)
    loaded = load_model(spec)
    assert torch.equal(loaded.weight, module.weight)
    cached = resolve_weights(spec)
    (www / "w.pt").unlink()  # the cached copy is used from now on
    assert resolve_weights(spec) == cached


def test_sha256_mismatch_is_refused_and_leaves_no_file(http_dir, tmp_path):
    www, base = http_dir
    saved_weights(www / "w.pt")
    wrong = "f" * 64
    with pytest.raises(WeightsError, match="fail their sha256 check"):
        resolve_weights(linear_spec(url=f"{base}/w.pt", sha256=wrong))
    downloads = tmp_path / "cache" / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []


def test_download_error_is_clear(http_dir):
    _, base = http_dir
    with pytest.raises(WeightsError, match="cannot download weights from .*missing.pt"):
        resolve_weights(linear_spec(url=f"{base}/missing.pt", sha256="a" * 64))


def test_local_path_with_wrong_sha(tmp_path):
    _, sha = saved_weights(tmp_path / "w.pt")
    assert resolve_weights(linear_spec(path=str(tmp_path / "w.pt"), sha256=sha)) == tmp_path / "w.pt"
    with pytest.raises(WeightsError, match="fails its sha256 check"):
        resolve_weights(linear_spec(path=str(tmp_path / "w.pt"), sha256="b" * 64))


def test_weights_that_do_not_fit(tmp_path):
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeightsError, match="do not fit the module"):
        load_model(linear_spec(path=str(tmp_path / "w.pt")))


def test_untrained_builtin_without_training_says_how():
    from marcelle_torch.models import get_spec

    with pytest.raises(WeightsError, match="marcelle-torch train digits"):
        resolve_weights(get_spec("digits"), train_if_missing=False)


def test_written_files_are_readable_by_others(tmp_path):
    # mkstemp's 0600 used to reach the published file (an image's non-root user could not read it).
    from marcelle_torch.files import atomic_write_text

    path = atomic_write_text(tmp_path / "report.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_corrupt_cached_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    from marcelle_torch.models import get_spec
    from marcelle_torch.models.weights import trained_weights_path, training_metrics

    monkeypatch.setenv("MARCELLE_TORCH_CACHE", str(tmp_path))
    spec = get_spec("digits")
    path = trained_weights_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read weights .*digits-v3\.pt .*train again with --force") as err:
        training_metrics(spec)
    assert "\n" not in str(err.value)
