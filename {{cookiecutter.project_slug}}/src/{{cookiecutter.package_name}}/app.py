"""Wiring: the engine, the domain and the HTTP API in one Litestar application."""
{% if cookiecutter.include_read_model == "yes" %}
import os
{%- endif %}
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Router
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from backbone.api import admin_routes, aggregate_routes, health_routes{% if cookiecutter.include_read_model == "yes" %}, read_model_routes{% endif %}
from backbone.observability import configure_logging, configure_tracing
{%- if cookiecutter.include_read_model == "yes" %}
from backbone.readmodel import Projector, ReadModel
{%- endif %}
from backbone.runtime import Engine
from backbone.settings import EngineSettings

from {{ cookiecutter.package_name }} import settings as service_settings
from {{ cookiecutter.package_name }}.domain import DOMAIN
{%- if cookiecutter.include_read_model == "yes" %}
from {{ cookiecutter.package_name }}.readmodel import PROJECTION
{%- endif %}


def create_app(settings: EngineSettings | None = None) -> Litestar:
    settings = settings or service_settings.load()
    configure_logging(settings.log_level)
    provider = configure_tracing(settings.service, settings.tracing, settings.node_id)
    engine = Engine(settings, DOMAIN)
    route_handlers: list[Router] = [
        aggregate_routes(engine, service_settings.PLURAL),
        health_routes(engine),
        admin_routes(engine),
    ]
    services: list[Any] = []
{%- if cookiecutter.include_read_model == "yes" %}
    # READ_MODEL=off leaves projection to other processes (e.g. one writer for PostgreSQL).
    if os.environ.get("READ_MODEL", "on") != "off":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        default_url = f"sqlite:///{settings.data_dir / 'readmodel.db'}"
        url = os.environ.get("READ_MODEL_URL", default_url)
        model = ReadModel(url, PROJECTION, DOMAIN.aggregate)
        changelog = engine.topics.changelog
        services.append(
            Projector(settings.bootstrap_servers, changelog, settings.partitions, model)
        )
        route_handlers.append(read_model_routes(model, service_settings.PLURAL))
{%- endif %}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await engine.start()
        for service in services:
            await service.start()
        try:
            yield
        finally:
            for service in reversed(services):
                await service.stop()
            await engine.stop()
            if provider is not None:
                provider.shutdown()

    app = Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        plugins=[OpenTelemetryPlugin(OpenTelemetryConfig())] if provider else [],
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,  # structlog, configured above, owns logging
    )
    app.state.engine = engine
    return app
