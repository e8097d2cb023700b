"""The docs site builds strictly (a broken link or anchor, or a generated part that fails, fails it),
its generated parts are there, and the README stays a short, true front page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"`make docs` fails:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def test_reference_pages_are_generated_from_the_code(site):
    from marcelle_torch.cli import build_parser

    cli = page(site, "reference/cli")
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        for name in action.choices:
            assert f"marcelle-torch {name}" in cli, name
    assert "marcelle-torch model init" in cli
    doc = json.loads((site / "reference" / "openapi.json").read_text())
    assert "/v1/models/{name}:predict" in doc["paths"]
    assert "/v1/models/{name}:predict" in page(site, "reference/http-api")
    metrics = page(site, "reference/metrics")
    assert "marcelle_torch_worker_runs_total" in metrics and "MarcelleTorchWorkerAbsent" in metrics
    assert "ray.upgradeStrategy.type" in page(site, "reference/chart-values")


def test_the_security_page_shows_the_access_table(site):
    import importlib.util

    spec = importlib.util.spec_from_file_location("access_table", REPO / "tests" / "reliability" / "access_table.py")
    assert spec and spec.loader
    access_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(access_table)
    html = page(site, "security")
    first_row = access_table.markdown().splitlines()[2]  # after the header and the rule
    cells = [c.strip() for c in first_row.strip("|").split("|")][1:]
    assert all(cell in html for cell in cells) and "bad token" in html


def test_figures_come_from_the_results(site):
    # Each result the benchmarks page lists is rendered from the committed JSON (its date shows).
    bench = page(site, "benchmarks")
    listed = [r for r in sorted((REPO / "bench" / "out").glob("*.json")) if f"<code>{r.name}</code>" in bench]
    assert listed, "the benchmarks page lists no result"
    for result in listed:
        date = json.loads(result.read_text()).get("date")
        assert date is None or date in bench, f"{result.name}'s date is not on the benchmarks page"


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: move the detail to docs/"


def test_readme_links_resolve():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (REPO / path).exists(), f"README.md links to {target}, which does not exist"


def _first_bash_block(text: str) -> str:
    return text.split("```bash\n", 1)[1].split("```", 1)[0]


def test_your_model_commands_are_the_readmes():
    # tests/integration/test_model_folder.py runs the README's; the docs show the same three commands.
    readme = README.read_text().split("## Your model", 1)[1]
    docs = (REPO / "docs" / "your-model.md").read_text()
    assert _first_bash_block(docs) == _first_bash_block(readme)
