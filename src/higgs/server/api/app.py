"""The FastAPI application: routers, error handlers, middleware, OpenAPI at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from higgs import __version__
from higgs.server.admin.routes import admin
from higgs.server.api.deps import ApiContext
from higgs.server.api.devices import devices
from higgs.server.api.errors import install_error_handlers
from higgs.server.api.fastlane import FastLanes
from higgs.server.api.middleware import ObserveMiddleware
from higgs.server.api.routes import probes, v1

__all__ = ["create_app", "openapi_document"]


def _routed_app() -> FastAPI:
    app = FastAPI(
        title="bosonserver",
        version=__version__,
        description="Higgs.net central server API (docs/protocol.md §2)",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(devices)  # issue 18
    app.include_router(probes)
    app.include_router(admin)
    return app


def create_app(ctx: ApiContext, *, fast_lanes: bool = True) -> FastAPI:
    """``fast_lanes`` off: every request through FastAPI (the tests compare the two)."""
    app = _routed_app()
    app.state.ctx = ctx
    # The last added runs first: the observer (metrics, body limit) sees every request,
    # then the fast lanes take the heartbeats, routes and closes they can serve.
    if fast_lanes:
        app.add_middleware(FastLanes, ctx=ctx)
    app.add_middleware(ObserveMiddleware, metrics=ctx.metrics, max_body=ctx.settings.max_body_bytes)
    return app


def openapi_document() -> dict[str, Any]:
    """The schema a server serves at /v1/openapi.json, without a server (contract tests)."""
    return _routed_app().openapi()
