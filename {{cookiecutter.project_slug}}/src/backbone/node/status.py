"""What a node reports: ``/health/ready`` and ``/admin/assignment``, read from its parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backbone.node.partition import Role, State

if TYPE_CHECKING:
    from backbone.node.engine import Engine, Parts


def node_status(engine: Engine[Any], parts: Parts[Any] | None, joined: bool) -> dict[str, Any]:
    node = engine.settings.node_id
    generation = engine.generation.number
    if parts is None:
        return {"ready": False, "node": node, "starting": True, "generation": generation}
    partitions = parts.partitions
    failures = partitions.failures()
    failure = engine.failure or (failures[0] if failures else None)
    assigned = partitions.in_role(Role.ACTIVE)
    return {
        "ready": joined and failure is None and partitions.all_active_ready(),
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
        "processed": parts.processor.processed,
        "dead_letters": parts.processor.dead_letters,
        "applied": parts.processor.window.as_dict(),
        "failure": failure,
    }


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
