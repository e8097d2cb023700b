"""The scenarios of scenarios.py on each target (conftest.py: local stack, kind cluster).
Each scenario stands on its own: any one may run alone or in any order."""

from __future__ import annotations

import pytest
import scenarios

pytestmark = [pytest.mark.ray, pytest.mark.backend]


def test_predict_through_serve(target, make_digit):
    scenarios.predict_through_serve(target, make_digit)


def test_onnx_bundle_served_by_the_webapp(target):
    scenarios.onnx_bundle_served_by_webapp(target)


def test_backend_run_completes_with_progress(target):
    scenarios.backend_run_completes_with_progress(target)


def test_a_users_model_answers_alike_on_the_three_paths(target):
    # Added by `up --model` locally, and by the chart's `models` value on kind.
    scenarios.user_model_on_three_paths(target)


def test_metrics_endpoints_answer(target, make_digit):
    scenarios.metrics_answer(target, make_digit)


def test_a_killed_worker_is_restarted_and_runs_go_on(target):
    if target.stack is None:
        pytest.skip("local launcher only: on Kubernetes the Deployment restarts the worker Pod")
    import signal
    import time

    supervisor = target.stack.supervisor
    killed = supervisor.current("worker 1")
    killed.signal(signal.SIGKILL)
    deadline = time.monotonic() + 300
    while supervisor.current("worker 1") in (killed, None) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert supervisor.current("worker 1") not in (killed, None), "the worker was not restarted"
    assert supervisor.registry.get_sample_value("marcelle_torch_stack_restarts_total", {"component": "worker 1"}) == 1
    scenarios.backend_run_completes_with_progress(target)
