"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from coordinator import console
from coordinator.context import AppContext, build_context
from coordinator.engine.blob_collector import BlobCollector
from coordinator.engine.driver import RoundDriver
from coordinator.engine.partials import PartialFolder
from coordinator.errors import install_error_handlers
from coordinator.logs import configure_logging
from coordinator.outages import install_outage_handlers
from coordinator.routes import admin, device, health
from coordinator.routes.problems import install_problem_schema
from coordinator.settings import Settings, get_settings


def create_app(settings: Settings | None = None, run_driver: bool = True) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = build_context(settings)
        app.state.ctx = ctx
        driver, folder, collector = RoundDriver(ctx), PartialFolder(ctx), BlobCollector(ctx)
        app.state.driver = driver
        if run_driver:
            driver.start()
            folder.start()
            collector.start()
        structlog.get_logger("coordinator").info("started", replica=ctx.replica_id,
                                                 database=ctx.engine.url.get_backend_name())
        try:
            yield
        finally:
            await collector.stop()
            await folder.stop()
            await driver.stop()
            await ctx.close()

    app = FastAPI(title="FedFace coordinator", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    install_outage_handlers(app)
    install_problem_schema(app)
    app.include_router(health.router)
    app.include_router(device.router)
    app.include_router(admin.router)
    app.include_router(console.router)

    return app


__all__ = ["AppContext", "create_app"]
