"""Time of the planner (``backbone.assignment.plan``) on a large group.

1,200 members (400 nodes x 3 processes) in 3 zones, 3,600 partitions, 2 standbys, as
``assignment_size`` but the planner alone, without the protocol's encoding. Timed, each the
best and the median of ``--repeat`` runs:

- ``first``: a group without any previous assignment or local state;
- ``sticky``: the next generation, every member reporting the first plan's tasks and stores;
- ``failover``: the next generation without one node's processes (its partitions move).

Each run's plan is checked against the first (the same input plans the same way; a sticky
re-plan moves nothing). The old unit-test bound (first + sticky under 2 s) is ``targets_met``.
No Kafka needed. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from backbone.assignment import MemberInfo, Plan, plan

from _common import machine

TARGET_SECONDS = 2.0  # first plan and sticky re-plan together, as the unit test once asserted


def members_of(nodes: int, processes: int, zones: int) -> list[MemberInfo]:
    return [
        MemberInfo(f"m-{n:03d}-{k}", f"node{n}", f"zone-{n % zones}")
        for n in range(nodes)
        for k in range(processes)
    ]


def next_generation(members: list[MemberInfo], previous: Plan) -> list[MemberInfo]:
    """The members as they rejoin: the plan's tasks as previous, caught-up stores for them."""
    out = []
    for m in members:
        active = previous.actives.get(m.member_id, [])
        standby = previous.standbys.get(m.member_id, [])
        out.append(
            replace(
                m,
                offsets=dict.fromkeys([*active, *standby], 1_000),
                active=frozenset(active),
                standby=frozenset(standby),
            )
        )
    return out


def timed(repeat: int, run: Callable[[], Plan]) -> tuple[Plan, dict[str, float]]:
    """run() ``repeat`` times: its plan (the same every time) and the best and median time."""
    seconds: list[float] = []
    result: Plan | None = None
    for _ in range(repeat):
        started = time.perf_counter()
        got = run()
        seconds.append(time.perf_counter() - started)
        assert result is None or got == result, "the same input planned differently"
        result = got
    assert result is not None
    return result, {
        "min": round(min(seconds), 4),
        "median": round(statistics.median(seconds), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--zones", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3_600)
    parser.add_argument("--standbys", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    members = members_of(args.nodes, args.processes, args.zones)
    first, first_s = timed(args.repeat, lambda: plan(members, args.partitions, args.standbys))
    rejoined = next_generation(members, first)
    sticky, sticky_s = timed(args.repeat, lambda: plan(rejoined, args.partitions, args.standbys))
    assert sticky == first, "a sticky re-plan with unchanged membership moved tasks"
    lost = members[0].node
    survivors = [m for m in rejoined if m.node != lost]
    after, failover_s = timed(args.repeat, lambda: plan(survivors, args.partitions, args.standbys))
    moved = sum(len(set(ps) - set(first.actives.get(mid, []))) for mid, ps in after.actives.items())

    figures: dict[str, Any] = {
        "members": len(members),
        "nodes": args.nodes,
        "zones": args.zones,
        "partitions": args.partitions,
        "standbys": args.standbys,
        "repeat": args.repeat,
        "first_plan_seconds": first_s,
        "sticky_plan_seconds": sticky_s,
        "failover_plan_seconds": failover_s,
        "zone_conflicts": first.zone_conflicts,
        "missing_standbys": first.missing_standbys,
        "unmet": first.unmet,
        "failover_moved_actives": moved,
        "failover_zone_conflicts": after.zone_conflicts,
        "target_seconds": TARGET_SECONDS,
        "targets_met": first_s["median"] + sticky_s["median"] < TARGET_SECONDS,
        **machine(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
