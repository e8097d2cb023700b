"""`marcelle-torch worker` refuses bad options before it connects or loads a model."""

from __future__ import annotations

import pytest

from marcelle_torch.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "ws://x"], "--backend must be an http(s) URL, got 'ws://x'"),
        (["--models", " , "], "--models is empty"),
        (["--threads", "-1"], "--threads must be 0 (the default) or more"),
        (["--heartbeat", "0"], "--heartbeat must be positive"),
        (
            ["--heartbeat", "2", "--lease-timeout", "4"],
            "--lease-timeout must be more than twice --heartbeat, or live runs would be taken back",
        ),
    ],
)
def test_bad_options_are_refused_with_a_message(args, message, capsys):
    argv = ["worker", "--backend", "http://127.0.0.1:9", *args]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"marcelle-torch worker: error: {message}"
