"""Fixtures for the security tests of the real Marcelle backend (node, services/backend).

The backend fixtures are those of tests/integration/conftest.py (``make_backend``,
``connect``, ``backend_installed``), loaded from that file so both suites start the backend
the same way. Helpers (raw HTTP requests, JWTs) are in ``backend_http.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "marcelle_torch_integration_conftest", Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
)
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

backend_installed = _integration.backend_installed
make_backend = _integration.make_backend
connect = _integration.connect

# The fault, flood and soak scenarios (test_worker_killed.py ... test_soak.py) also start real
# workers; helpers they share are in ``faults.py``.
trained_models = _integration.trained_models
make_worker = _integration.make_worker
wait_until = _integration.wait_until_fixture
