"""The chart README's values table is generated from values.yaml and must be current."""

from __future__ import annotations

import subprocess
import sys

from k8s_tools import CHART

NEEDS_HELM = False


def test_readme_is_up_to_date():
    result = subprocess.run([sys.executable, str(CHART / "gen_readme.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_value_is_documented(tmp_path):
    # The generator refuses values without a `# --` comment; prove it on a copy.
    import shutil

    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("files", "templates"))
    values = copy / "values.yaml"
    values.write_text(values.read_text() + "\nundocumented: 1\n")
    result = subprocess.run([sys.executable, str(copy / "gen_readme.py"), "--check"], capture_output=True, text=True)
    assert result.returncode != 0 and "undocumented" in result.stderr
