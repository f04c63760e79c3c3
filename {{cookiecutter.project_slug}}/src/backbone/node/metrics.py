"""The node's OpenTelemetry instruments, observed from its parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from backbone.node.partition import State

if TYPE_CHECKING:
    from backbone.node.engine import Parts


def register_metrics(parts: Parts[Any]) -> None:
    meter = metrics.get_meter("backbone")

    def unmet(_: CallbackOptions) -> list[Observation]:
        return [Observation(len(parts.assignor.unmet))]

    def standby_lag(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(lag, {"partition": p})
            for p, lag in parts.clients.reader.standby_lag().items()
            if lag is not None
        ]

    def processed(_: CallbackOptions) -> list[Observation]:
        return [Observation(parts.processor.processed)]

    def incomplete(_: CallbackOptions) -> list[Observation]:
        return [Observation(len(parts.partitions.in_state(State.INCOMPLETE)))]

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
