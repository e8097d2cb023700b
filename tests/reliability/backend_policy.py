"""The backend's policy (services/backend/policy.js, who may do what) as data, read by running it:
``node policy.js`` prints it as JSON. It needs Node (any version: policy.js has no dependency),
not the backend's node_modules."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

POLICY_JS = Path(__file__).resolve().parents[2] / "services" / "backend" / "policy.js"


@cache
def load() -> dict:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("`node` is not on PATH: it reads services/backend/policy.js")
    done = subprocess.run([node, str(POLICY_JS)], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"node {POLICY_JS.name} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def casl_rules(role: str, user_id: str) -> list[dict]:
    """The CASL rules the package gets for an account of this role and id (placeholders filled)."""

    def fill(value):
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return user_id if value == "${user._id}" else value

    return fill(load()["casl"].get(role, []))
