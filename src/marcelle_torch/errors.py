"""The project's error classes, each mapped to one HTTP status (as KServe's server does).

Every user-facing failure is one of these: the HTTP layer turns it into
``{"error": {"code", "message"}}`` with ``status``; the CLI prints ``message`` on one line.
"""

import re


class MarcelleTorchError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def first_line(exc: BaseException) -> str:
    """Another library's error, said in one line (its first, without terminal colours)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    return " ".join(text.splitlines()[0].split())[:400]


def cli_error_line(command: str, exc: MarcelleTorchError) -> str:
    """How a CLI command reports a failure: one line on stderr, then exit status 2."""
    return f"marcelle-torch {command}: error: {exc.message}"


class InvalidInput(MarcelleTorchError):
    status = 400
    code = "invalid_input"


class InvalidSpec(MarcelleTorchError):
    """A model definition (or a reference to one) that cannot be used."""

    status = 400
    code = "invalid_spec"


class ModelNotFound(MarcelleTorchError):
    status = 404
    code = "model_not_found"


class NotFound(MarcelleTorchError):
    """A route the HTTP API does not have."""

    status = 404
    code = "not_found"


class MethodNotAllowed(MarcelleTorchError):
    status = 405
    code = "method_not_allowed"


class OriginNotAllowed(MarcelleTorchError):
    """A browser origin outside the CORS allow-list."""

    status = 403
    code = "origin_not_allowed"


class HostNotAllowed(MarcelleTorchError):
    """A Host header that is not one of the server's names (DNS rebinding)."""

    status = 403
    code = "host_not_allowed"


class PayloadTooLarge(MarcelleTorchError):
    status = 413
    code = "payload_too_large"


class Overloaded(MarcelleTorchError):
    status = 503
    code = "overloaded"


class ModelNotReady(MarcelleTorchError):
    status = 503
    code = "not_ready"


class InferenceTimeout(MarcelleTorchError):
    status = 504
    code = "timeout"


class WeightsError(MarcelleTorchError):
    """Weights that cannot be found, downloaded, or that fail their sha256 check."""

    status = 500
    code = "weights"
