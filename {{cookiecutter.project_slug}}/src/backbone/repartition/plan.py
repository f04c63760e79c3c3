"""The state of a service's generations, folded from its control log.

The control log is one Kafka partition: every node appends what it did and reads what
all did, in the same order. Where a step must be decided once (the barrier offsets, the
switch), the first record for it wins, so nodes that race to write it still agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from backbone.repartition.layout import children, parents

REQUESTED = "requested"
PAUSED = "paused"
BARRIER = "barrier"
DRAINED = "drained"
DERIVED = "derived"
SWITCHED = "switched"
ABORTED = "aborted"
RETIRED = "retired"
STEPS = (REQUESTED, PAUSED, BARRIER, DRAINED, DERIVED, SWITCHED, ABORTED, RETIRED)


@dataclass(frozen=True, slots=True)
class Generation:
    number: int
    partitions: int


@dataclass(slots=True)
class Plan:
    """One change of partition count, from ``source`` to ``target``."""

    source: Generation
    target: Generation
    requested_at: float
    paused: dict[str, float] = field(default_factory=dict)  # node -> when
    barrier: dict[int, int] | None = None  # old partition -> end offset of its input
    drained: dict[int, int] = field(default_factory=dict)  # old partition -> changelog end
    derived: dict[int, set[str]] = field(default_factory=dict)  # new partition -> nodes
    derived_zones: dict[int, set[str]] = field(default_factory=dict)
    switched_at: float | None = None
    aborted: bool = False

    @property
    def split(self) -> bool:
        return self.target.partitions > self.source.partitions

    def children(self, parent: int) -> list[int]:
        return children(parent, self.source.partitions, self.target.partitions)

    def parents(self, child: int) -> list[int]:
        return parents(child, self.source.partitions, self.target.partitions)

    @property
    def step(self) -> str:
        if self.aborted:
            return ABORTED
        if self.switched_at is not None:
            return SWITCHED
        if self.barrier is None:
            return PAUSED if self.paused else REQUESTED
        if len(self.drained) < self.source.partitions:
            return DRAINED
        return DERIVED

    def derivable(self, held: Mapping[int, int]) -> list[int]:
        """The parents a node can derive children from, given the changelog offsets of
        the copies it holds: each drained parent whose copy here holds all it drained, for
        a merge only the first of its parents, once the others have drained and this
        node's copies of them (if any) caught up. A copy that lags must not be derived
        from: the tail it misses would be lost."""
        drained = self.drained

        def complete(p: int) -> bool:
            return p in drained and held.get(p, -1) >= drained[p]

        if self.split:
            return [p for p in sorted(drained) if complete(p)]
        return [
            p
            for p in range(self.target.partitions)
            if complete(p)
            and all(q in drained and (q not in held or complete(q)) for q in self.parents(p))
        ]

    def underived(self) -> list[int]:
        return [c for c in range(self.target.partitions) if not self.derived.get(c)]


@dataclass(slots=True)
class Generations:
    """What the control log says: the generation in force, the one before it (whose topics
    still exist until retired) and the change under way, if any."""

    current: Generation
    previous: Plan | None = None  # the plan that made ``current``, until it is retired
    plan: Plan | None = None
    offset: int = 0  # of the control log, next to read

    def apply(self, key: str, value: dict[str, Any]) -> None:
        number_text, step, who = key.split("/", 2)
        number = int(number_text)
        plan = self.plan
        if step == REQUESTED:
            if plan is None and number == self.current.number + 1:
                self.plan = Plan(
                    source=self.current,
                    target=Generation(number, int(value["to"])),
                    requested_at=float(value["at"]),
                )
            return
        if step == RETIRED:
            if self.previous is not None and self.previous.target.number == number:
                self.previous = None
            return
        if plan is None or plan.target.number != number or plan.aborted:
            return  # another generation's record, or a late one of a finished change
        if step == PAUSED:
            plan.paused[who] = float(value["at"])
        elif step == BARRIER and plan.barrier is None:
            plan.barrier = {int(p): int(o) for p, o in value["offsets"].items()}
        elif step == DRAINED and plan.barrier is not None:
            plan.drained.setdefault(int(value["partition"]), int(value["changelog_end"]))
        elif step == DERIVED and plan.barrier is not None:
            for child in value["children"]:
                plan.derived.setdefault(int(child), set()).add(str(value["node"]))
                plan.derived_zones.setdefault(int(child), set()).add(str(value["zone"]))
        elif step == SWITCHED and plan.barrier is not None and not plan.underived():
            plan.switched_at = float(value["at"])
            self.current = plan.target
            self.previous = plan
            self.plan = None
        elif step == ABORTED and plan.barrier is None:
            plan.aborted = True
            self.plan = None


def fold(initial: Generation, records: Iterable[tuple[bytes, bytes]]) -> Generations:
    state = Generations(initial)
    for key, value in records:
        state.apply(key.decode(), msgspec.json.decode(value))
    return state


def record(generation: int, step: str, who: str, **value: Any) -> tuple[bytes, bytes]:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    return f"{generation}/{step}/{who}".encode(), msgspec.json.encode(value)
