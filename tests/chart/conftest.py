"""Chart tests need the real helm binary; without it they skip with one line saying how to get it.
A test module that does not need helm says so with `NEEDS_HELM = False`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_tools import INSTALL_HINT, find_tool  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if find_tool("helm"):
        return
    skip = pytest.mark.skip(reason=f"helm not found: {INSTALL_HINT}")
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents and getattr(item.module, "NEEDS_HELM", True):
            item.add_marker(skip)
