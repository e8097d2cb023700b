"""`marcelle-torch up` refuses bad options before it starts anything."""

from __future__ import annotations

import pytest

from marcelle_torch.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--keep-runs", "-1"], "--keep-runs must be 0 (keep every run) or a number of seconds"),
    ],
)
def test_bad_options_are_refused_with_a_message(args, message, capsys, tmp_path):
    assert main(["up", "--workdir", str(tmp_path / "stack"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"marcelle-torch up: error: {message}"
    assert not (tmp_path / "stack").exists(), "nothing is started or written"
