"""Wiring: the engine, the domain and the HTTP API in one Litestar application."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from backbone.api import aggregate_routes, health_routes
from backbone.observability import configure_logging, configure_tracing
from backbone.runtime import Engine
from backbone.settings import EngineSettings

from {{ cookiecutter.package_name }} import settings as service_settings
from {{ cookiecutter.package_name }}.domain import DOMAIN


def create_app(settings: EngineSettings | None = None) -> Litestar:
    settings = settings or service_settings.load()
    configure_logging(settings.log_level)
    provider = configure_tracing(settings.service, settings.tracing, settings.node_id)
    engine = Engine(settings, DOMAIN)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()
            if provider is not None:
                provider.shutdown()

    route_handlers = [
        aggregate_routes(engine, service_settings.PLURAL),
        health_routes(engine),
    ]
    app = Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        plugins=[OpenTelemetryPlugin(OpenTelemetryConfig())] if provider else [],
        request_max_body_size=settings.max_body_bytes,
    )
    app.state.engine = engine
    return app
