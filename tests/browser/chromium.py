"""The headless Chromium the browser tests and bench/parity.py launch: Debian's, by default.

``CHROMIUM``: its path ($MARCELLE_TORCH_CHROMIUM, else /usr/bin/chromium); ``CHROMIUM_ARGS``: the
flags it runs with (headless, no sandbox or GPU, and nothing that reaches out to the network).
"""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("MARCELLE_TORCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # A synthetic camera, allowed without asking: the webcam input's tests.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
