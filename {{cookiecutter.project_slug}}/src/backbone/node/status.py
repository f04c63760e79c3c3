"""What a node reports: ``/health/ready`` and ``/admin/assignment``, read from its parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backbone.node.partition import Partition, Role, State

if TYPE_CHECKING:
    from backbone.node.engine import Engine, Parts


def node_status(
    engine: Engine[Any], parts: Parts[Any] | None, joined: bool, dead: list[str]
) -> dict[str, Any]:
    node = engine.settings.node_id
    generation = engine.generation.number
    if parts is None:
        return {
            "ready": False,
            "reasons": ["the node is starting (or switching generations)"],
            "node": node,
            "starting": True,
            "generation": generation,
        }
    partitions = parts.partitions
    failures = partitions.failures()
    failure = engine.failure or (failures[0] if failures else None)
    assigned = partitions.in_role(Role.ACTIVE)
    reasons = not_ready(parts, joined, dead, engine.failure)
    return {
        "ready": not reasons,
        "reasons": reasons,
        "node": node,
        "zone": engine.settings.zone,
        "generation": generation,
        "partitions_total": engine.generation.partitions,
        "active": sorted(partitions.in_state(State.ACTIVE)),
        "assigned": sorted(assigned),
        "standby": sorted(partitions.in_role(Role.STANDBY)),
        "standby_lag": parts.clients.reader.standby_lag(),
        "partitions": partitions.states(),
        "restoring": parts.clients.reader.progress(),
        "bootstrapping": [p.as_dict() for p in parts.bootstrapper.progress.values()],
        "incomplete": partitions.incomplete(),
        "rebuilt_from_input": partitions.rebuilds(),
        "processed": parts.processor.processed,
        "dead_letters": parts.processor.dead_letters,
        "applied": parts.processor.window.as_dict(),
        "failure": failure,
    }


def not_ready(parts: Parts[Any], joined: bool, dead: list[str], failure: str | None) -> list[str]:
    """Why this node is not ready, in words; empty when it is."""
    reasons = list(dead)
    if failure is not None and not any(failure in reason for reason in dead):
        reasons.append(failure)
    if not joined:
        reasons.append("the node has not joined the consumer group yet, or a rebalance is on")
    if not parts.partitions.all_active_ready():
        for p, held in sorted(parts.partitions.held.items()):
            if held.role is Role.ACTIVE and not held.ready:
                reasons.append(_partition_reason(parts, p, held))
    return reasons


def _partition_reason(parts: Parts[Any], p: int, held: Partition) -> str:
    if held.state is State.REBUILDING and held.rebuild is not None:
        store = parts.partitions.stores.get(p)
        applied = store.meta().input_offset if store is not None else held.rebuild.from_offset
        lost = ", and the input's deleted history is gone" if held.rebuild.history_lost else ""
        return (
            f"partition {p} is rebuilding from the events topic: every copy of its state was "
            f"lost{lost}; input applied up to offset {applied} of {held.rebuild.caught_up_at}"
        )
    if held.state is State.INCOMPLETE:
        return (
            f"partition {p} is incomplete: every copy was lost and its history was partly "
            f"deleted (see 'incomplete'); serve what is left with accept-loss --partition {p}"
        )
    if held.state is State.FAILED:
        return held.failure or f"partition {p} failed"
    return f"partition {p} is {held.state.value}"


def assignment_view(engine: Engine[Any], parts: Parts[Any]) -> dict[str, Any]:
    plan = parts.assignor.last_plan
    partitions = parts.partitions
    return {
        "node": engine.settings.node_id,
        "zone": engine.settings.zone,
        "active": sorted(partitions.in_role(Role.ACTIVE)),
        "standby": sorted(partitions.in_role(Role.STANDBY)),
        "standby_lag": parts.clients.reader.standby_lag(),
        "unmet": parts.assignor.unmet,
        "leader_plan": None
        if plan is None
        else {
            "unmet": plan.unmet,
            "zone_conflicts": plan.zone_conflicts,
            "missing_standbys": plan.missing_standbys,
            "handoffs": plan.handoffs,
        },
        "group": parts.clients.routing.routes.as_dict(),
    }
