"""values.schema.json refuses bad values with a message that names the value and the reason."""

from __future__ import annotations

import pytest
from k8s_tools import render_text

BAD = [
    (("gpu.enabled=yes",), "at '/gpu/enabled': got string, want boolean"),
    (("ray.cpuWorkers.replicas=-1",), "at '/ray/cpuWorkers/replicas': minimum: got -1, want 0"),
    (("worker.replicas=-2",), "at '/worker/replicas': minimum: got -2, want 0"),
    (("webapp.image.tag=bad:tag",), "at '/webapp/image/tag': 'bad:tag' does not match pattern"),
    (("ray.image.repository=Upper/Case",), "at '/ray/image/repository'"),
    (("backend.database=postgres",), "at '/backend/database'"),
    (("backend.database=mongodb",), "at '/backend/mongodb': 'anyOf' failed"),
    (("backend.mongodb.url=http://db",), "at '/backend/mongodb/url': 'http://db' does not match pattern"),
    (("gpu.enable=true",), "at '/gpu': additional properties 'enable' not allowed"),
    (("backend.keepFinishedRunsSeconds=-1",), "at '/backend/keepFinishedRunsSeconds': minimum: got -1, want 0"),
    (("gpu.gpusPerPod=0",), "at '/gpu/gpusPerPod': minimum: got 0, want 1"),
    (("monitoring.interval=soon",), "at '/monitoring/interval'"),
    (("imagePullPolicy=Sometimes",), "at '/imagePullPolicy'"),
    # Not expressible in the schema without unreadable regexes: the templates refuse it by name.
    (("worker.image.tag=latest",), 'worker.image.tag: "latest" is refused'),
    (("gpu.enabled=true", "gpu.image.tag=latest"), 'gpu.image.tag: "latest" is refused'),
]


@pytest.mark.parametrize("sets,message", BAD, ids=[s[0] for s, _ in BAD])
def test_bad_values_are_refused_clearly(sets, message):
    result = render_text(sets=sets, check=False)
    assert result.returncode != 0, f"{sets} was accepted"
    assert message in result.stderr, result.stderr


def test_good_overrides_pass():
    result = render_text(
        sets=(
            "gpu.enabled=true",
            "ray.cpuWorkers.replicas=0",
            "ray.cpuWorkers.minReplicas=0",
            "worker.image.tag=0.1.0-rc.1",
            "backend.database=mongodb",
            "backend.mongodb.url=mongodb+srv://cluster0.example.net/db",
        ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
