"""What ``repartition --status`` and the admin route show: the steps, the progress, and
what blocks the change."""

from __future__ import annotations

import time
from typing import Any

from backbone.repartition.plan import Generations, Plan


def describe(
    state: Generations, failure: str | None = None, late: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "generation": state.current.number,
        "partitions": state.current.partitions,
        "in_progress": state.plan is not None,
    }
    if state.plan is not None:
        out["change"] = _plan(state.plan)
    if state.previous is not None:
        previous = state.previous
        out["previous_generation"] = {
            "generation": previous.source.number,
            "partitions": previous.source.partitions,
            "switched_at": previous.switched_at,
            "retire": "retire it with `repartition --retire` once no producer writes to "
            "its input topic (late records are forwarded until then)",
        }
    if failure is not None:
        out["failure"] = failure
    if late is not None:
        out["late_records_forwarded"] = late
    return out


def _plan(plan: Plan) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {
        "from": {"generation": plan.source.number, "partitions": plan.source.partitions},
        "to": {"generation": plan.target.number, "partitions": plan.target.partitions},
        "kind": "split" if plan.split else "merge",
        "step": plan.step,
        "running_s": round(now - plan.requested_at, 1),
        "paused": sorted(plan.paused),
        "barrier": plan.barrier,
        "drained": f"{len(plan.drained)}/{plan.source.partitions}",
        "derived": f"{plan.target.partitions - len(plan.underived())}/{plan.target.partitions}",
    }
    blocked = []
    if plan.barrier is not None:
        waiting = sorted(set(range(plan.source.partitions)) - set(plan.drained))
        if waiting:
            blocked.append(
                f"old partitions {waiting} are not drained: their active node must apply "
                "its input up to the barrier; start the nodes that held them"
            )
        elif plan.underived():
            blocked.append(
                f"new partitions {plan.underived()} have no derived copy yet: a node "
                "holding their parent derives them; start the nodes that held them"
            )
    out["blocked"] = blocked
    return out
