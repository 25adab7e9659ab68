"""One error shape for every non-2xx answer: ``{"error": code, "message": text}``.

FastAPI's own validation and HTTP errors are reshaped here so a client never sees a different
format; the message names the offending field (``body.public_key: …``). The catch-all handler
is the last resort and answers a JSON 500 without a traceback (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from higgs.protocol.api import ErrorResponse
from higgs.server.services.errors import ServiceError

__all__ = [
    "DEFERRED_AUTH",
    "RateLimited",
    "allowed_methods",
    "documented_errors",
    "error_response",
    "failure_response",
    "install_error_handlers",
    "service_error_response",
    "validation_message",
]

log = logging.getLogger(__name__)

# The ``request.state`` attribute where a dependency leaves a credential check it handed to
# the endpoint (the heartbeat's, api/deps.py): a zero-argument coroutine function.
DEFERRED_AUTH = "deferred_auth"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")

# FastAPI's detail for a body it cannot decode at all (not UTF-8, or not JSON it can read).
_FASTAPI_UNPARSABLE = "There was an error parsing the body"


class RateLimited(ServiceError):
    status = 429

    def __init__(self, retry_after: str) -> None:
        super().__init__("rate_limited", f"too many requests; retry after {retry_after} s")
        self.retry_after = retry_after


def documented_errors(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """An endpoint's ``responses=`` for the OpenAPI schema: the error shape for each of
    ``codes``, plus 422 and 429 that any /v1 endpoint may answer, plus 400 (a body it cannot
    even decode) for an endpoint that takes a JSON ``body``."""
    extra = (400,) if body else ()
    return {code: {"model": ErrorResponse} for code in (422, 429, *extra, *codes)}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path. Starlette's own ``Allow`` names only the
    first route that matched the path, so ``GET`` alone on a path that also takes ``DELETE``."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return "body: the request body is not valid JSON"
    if kind == "model_attributes_type" or (kind == "dict_type" and loc == ["body"]):
        return "body: must be a JSON object"
    # Literal/union errors repeat the location per branch; keep the field part readable.
    where = ".".join(p for p in loc if not p.startswith("function-")) or "request"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if kind == "missing":
        msg = "field required"
    return f"{where}: {msg}"


def validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        text = _describe(err)
        if text not in parts:
            parts.append(text)
    more = len(errors) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def service_error_response(exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": exc.retry_after} if isinstance(exc, RateLimited) else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status, exc.code, exc.message, headers)


def failure_response(exc: Exception, path: str, method: str) -> JSONResponse:
    """The answer to an endpoint's exception: its own for a :class:`ServiceError`, 409 for a
    lost race, 503 for a database that is down, else a JSON 500 (the traceback to the log).
    For the handlers below and for the heartbeat's lane (api/fastlane.py), which runs
    outside FastAPI's exception handling."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    if isinstance(exc, IntegrityError):
        # Two requests raced for the same unique row (e.g. one public key registered twice
        # at once); the loser may simply retry.
        log.warning("concurrent change refused", extra={"path": path})
        return error_response(
            409, "conflict", "a concurrent request changed the same record; retry"
        )
    if isinstance(exc, _DATABASE_DOWN):
        log.error("database unavailable", extra={"path": path, "problem": type(exc).__name__})
        return error_response(
            503, "unavailable", "the database is unavailable; retry later", {"Retry-After": "5"}
        )
    log.error("unhandled error", exc_info=exc, extra={"path": path, "method": method})
    return error_response(500, "internal", "internal server error; see the server log")


# A lost database connection is an outage, not a bug: 503 so that callers retry.
_DATABASE_DOWN = (OperationalError, InterfaceError, OSError)


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return service_error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # A credential a dependency left to the endpoint (the heartbeat's) is checked first:
        # a bad token is answered 401/403 whatever the body, as everywhere else.
        check = getattr(request.state, DEFERRED_AUTH, None)
        if check is not None:
            try:
                await check()
            except ServiceError as denied:
                return service_error_response(denied)
        return error_response(422, "invalid_request", validation_message(list(exc.errors())))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        if exc.status_code == 404:
            message = f"no such path: {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and exc.detail == _FASTAPI_UNPARSABLE:
            message = "body: the request body cannot be decoded; send a UTF-8 JSON object"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, code, message, headers or None)

    async def on_failure(request: Request, exc: Exception) -> JSONResponse:
        return failure_response(exc, request.url.path, request.method)

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(IntegrityError, on_failure)
    for down in _DATABASE_DOWN:
        app.add_exception_handler(down, on_failure)
    app.add_exception_handler(Exception, on_failure)
