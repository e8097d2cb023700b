"""The scenarios of scenarios.py on each target (conftest.py: local stack, kind cluster).
Order matters within a target: predictions come before the metrics check that counts them."""

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


def test_metrics_endpoints_answer(target):
    scenarios.metrics_answer(target)
