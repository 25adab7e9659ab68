"""Errors the services raise on purpose; the API maps each kind to one HTTP status."""

from __future__ import annotations

from higgs.common.errors import HiggsError

__all__ = [
    "Conflict",
    "Forbidden",
    "Gone",
    "NotFound",
    "ServiceError",
    "Unauthorized",
    "Unavailable",
]


class ServiceError(HiggsError):
    """``code`` is the stable machine-readable ``error`` of the API answer."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Gone(ServiceError):
    status = 410


class Unavailable(ServiceError):
    status = 503
