"""Errors the service raises: ServiceError and its subclasses carry an HTTP status and a message safe to show a
client; ConfigError and LoadError say why a model version cannot be served."""

from __future__ import annotations


MAX_PROBLEMS = 20
"""Problems listed in one error message: a request of a million bad tensors would otherwise get a reply four
times its own size."""


def join_problems(problems: list[str]) -> str:
    """The problems as one message: the first MAX_PROBLEMS, then how many more there are."""
    shown = "; ".join(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        shown += f"; and {len(problems) - MAX_PROBLEMS} more problems"
    return shown


class ServiceError(Exception):
    """Base class: one handler turns it into `{"error": message}` with `status_code`."""

    status_code = 500

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(ServiceError):
    status_code = 400


class InvalidInput(BadRequest):
    """One or more request tensors do not match the model; `problems` holds every one of them."""

    def __init__(self, model: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid inference request for model '{model}': " + join_problems(problems))


class ModelNotFound(ServiceError):
    """Triton's wording, which clients match on ("Request for unknown model: 'x' is not found"); Triton answers 400
    for an unknown name, nnserve 404 (the V2 protocol's status for a missing model)."""

    status_code = 404

    def __init__(self, name: str, version: str | None = None, available: list[str] | None = None):
        if version is None:
            message = f"Request for unknown model: '{name}' is not found"
            if available is not None:
                message += f"; available models: {available}"
        else:
            message = f"Request for unknown model: '{name}' version {version} is not found"
            if available is not None:
                message += f"; available versions: {available}"
        super().__init__(message)


class ModelNotReady(ServiceError):
    status_code = 503

    def __init__(self, name: str, version: str | None = None, reason: str = "it is still loading"):
        what = f"model '{name}'" + (f" version '{version}'" if version else "")
        super().__init__(f"{what} is not ready: {reason}")


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class InferenceFailed(ServiceError):
    """ONNX Runtime failed on input that passed validation: a server-side bug, reported as 500."""

    status_code = 500


class ConfigError(ValueError):
    """A config.pbtxt that cannot be read, or that does not fit the model; the message says why."""


class LoadError(Exception):
    """A version that must not be served; the message says why (shown in logs and the repository index)."""
