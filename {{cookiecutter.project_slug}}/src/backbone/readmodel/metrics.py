"""The read model's OpenTelemetry instruments, observed from its projector."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from backbone.readmodel.projector import Projector


def register_metrics(projector: Projector[Any]) -> None:
    meter = metrics.get_meter("backbone")

    def lag(_: CallbackOptions) -> list[Observation]:
        behind = projector.lag()
        return [] if behind is None else [Observation(behind)]

    def alive(_: CallbackOptions) -> list[Observation]:
        return [Observation(1 if projector.alive else 0)]

    meter.create_observable_gauge(
        "backbone.read_model.lag",
        [lag],
        description="changelog records not yet in the SQL read model",
    )
    meter.create_observable_gauge(
        "backbone.read_model.alive",
        [alive],
        description="1 while the read model projector runs, 0 once it died",
    )
