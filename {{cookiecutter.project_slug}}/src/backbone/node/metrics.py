"""The node's OpenTelemetry instruments, observed from its parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from backbone.node.partition import State

if TYPE_CHECKING:
    from backbone.node.engine import Engine


def register_metrics(engine: Engine[Any]) -> None:
    """Once per process: the callbacks read the parts of the generation in force."""
    meter = metrics.get_meter("backbone")

    def unmet(_: CallbackOptions) -> list[Observation]:
        parts = engine.parts
        return [] if parts is None else [Observation(len(parts.assignor.unmet))]

    def standby_lag(_: CallbackOptions) -> list[Observation]:
        parts = engine.parts
        if parts is None:
            return []
        return [
            Observation(lag, {"partition": p})
            for p, lag in parts.clients.reader.standby_lag().items()
            if lag is not None
        ]

    def processed(_: CallbackOptions) -> list[Observation]:
        parts = engine.parts
        now = 0 if parts is None else parts.processor.processed
        return [Observation(engine.processed_before + now)]

    def incomplete(_: CallbackOptions) -> list[Observation]:
        parts = engine.parts
        if parts is None:
            return []
        return [Observation(len(parts.partitions.in_state(State.INCOMPLETE)))]

    def late(_: CallbackOptions) -> list[Observation]:
        return [Observation(engine.generations.late_records())]

    meter.create_observable_gauge(
        "backbone.assignment.unmet_constraints",
        [unmet],
        description="assignment constraints the group leader could not meet",
    )
    meter.create_observable_gauge(
        "backbone.standby.lag", [standby_lag], description="records behind the changelog"
    )
    meter.create_observable_counter(
        "backbone.events.processed", [processed], description="events applied"
    )
    meter.create_observable_gauge(
        "backbone.partitions.incomplete",
        [incomplete],
        description="active partitions whose every copy was lost, waiting for accept-loss",
    )
    meter.create_observable_counter(
        "backbone.repartition.late_records",
        [late],
        description="records sent to a previous generation's input and forwarded to this one",
    )
