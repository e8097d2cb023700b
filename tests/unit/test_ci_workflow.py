"""The GitHub workflow runs every test tier (a tier left out there is never run on a push)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_every_test_tier_is_run_by_a_job():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    commands = " ".join(
        step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"] if isinstance(step, dict)
    )
    run = {m for cmd in re.findall(r"pytest ([^\n]*)", commands) for m in re.findall(r"tests/(\w+)", cmd)}
    tiers = {p.parent.name for p in (REPO / "tests").glob("*/test_*.py")}
    assert tiers - run == set(), f"test tiers no CI job runs: {sorted(tiers - run)}"
