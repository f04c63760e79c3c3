"""The public Litestar application of a node: the engine, its routes and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Router
from litestar.exceptions import NotFoundException
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from backbone.http.docs import openapi_config
from backbone.http.public import (
    admin_routes,
    aggregate_routes,
    events_path_format,
    health_routes,
    read_model_routes,
    slash_in_id_handler,
)
from backbone.http.siblings import this_worker
from backbone.kafka_connection import kafka_connection
from backbone.node.engine import Engine
from backbone.observability import configure_logging, configure_tracing, log_refusals
from backbone.readmodel.projector import Projector
from backbone.settings import EngineSettings

if TYPE_CHECKING:
    from backbone.service import Service


def create_app(service: Service[Any], settings: EngineSettings) -> Litestar:
    configure_logging(settings.log_level)
    provider = configure_tracing(settings.service, settings.tracing, settings.node_id)
    engine = Engine(settings, service.domain)
    route_handlers: list[Router] = [
        *aggregate_routes(engine, service.plural),
        admin_routes(engine),
    ]
    services: list[Any] = []
    projector: Projector[Any] | None = None
    filters: dict[str, str] = {}  # of the list route, for the OpenAPI document
    # READ_MODEL=off leaves projection to other processes (e.g. one writer for PostgreSQL).
    if service.projection is not None and settings.read_model:
        from backbone.changelog.sources import ChangelogSource
        from backbone.readmodel import ReadModel
        from backbone.readmodel.metrics import register_metrics
        from backbone.readmodel.model import database_url

        model = ReadModel(database_url(settings), service.projection, service.domain.aggregate)

        def sources() -> list[ChangelogSource]:
            return engine.generations.changelog_sources(engine.topics, engine.generation)

        # One projector per node: of several workers, worker 0's; they share its database.
        if this_worker() == "0":
            projector = Projector(kafka_connection(settings), sources, model)
            register_metrics(projector)
            services.append(projector)
        route_handlers.append(read_model_routes(model, service.plural))
        filters = model.filters()
    route_handlers.append(health_routes(engine, projector))
    if settings.metrics:
        from backbone.http.metrics import metrics_routes

        route_handlers.append(metrics_routes(engine, projector))

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await engine.start()
        for part in services:
            await part.start()
        try:
            yield
        finally:
            for part in reversed(services):
                await part.stop()
            await engine.stop()
            if provider is not None:
                provider.shutdown()

    app = Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        plugins=[OpenTelemetryPlugin(OpenTelemetryConfig())] if provider else [],
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,  # structlog, configured above, owns logging
        before_send=[log_refusals],  # 4xx answers, logged without secrets
        openapi_config=openapi_config(
            service.title,
            service.release(),
            engine.domain.handlers.event_types,
            events_path_format(service.plural),
            filters,
        ),
        exception_handlers={NotFoundException: slash_in_id_handler(service.plural)},
    )
    app.state.engine = engine
    return app
