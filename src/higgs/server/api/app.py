"""The FastAPI application: routers, error handlers, middleware, OpenAPI at /v1/openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from higgs import __version__
from higgs.server.admin.routes import admin
from higgs.server.api.deps import ApiContext
from higgs.server.api.errors import install_error_handlers
from higgs.server.api.middleware import ObserveMiddleware
from higgs.server.api.routes import probes, v1

__all__ = ["create_app"]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="bosonserver",
        version=__version__,
        description="Higgs.net central server API (docs/protocol.md §2)",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(probes)
    app.include_router(admin)
    app.add_middleware(ObserveMiddleware, metrics=ctx.metrics, max_body=ctx.settings.max_body_bytes)
    return app
