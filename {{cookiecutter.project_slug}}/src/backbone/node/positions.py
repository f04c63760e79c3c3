"""Read-your-writes: the position a write was given, and whether a replica's value of the
key reflects it (docs/decisions/0018-queries.md).

A position is (generation, partition, offset) of the event in its generation's input. A
replica of the current generation has applied it when the key's fence (the input offset of
the last event applied to it) reached the offset, or, on the active, when the partition's
input was applied past it (an event that went to the dead letters changed no value). A
position of the previous generation was applied before the switch when it lies below the
barrier; above it, the event was a late record, and the key's late fence tells.
"""

from __future__ import annotations

from dataclasses import dataclass

from backbone.repartition.plan import Plan

TOKEN_RULE = "a position is '<generation>.<partition>.<offset>', as a POST's 202 answer gives it"


@dataclass(frozen=True, slots=True)
class Position:
    generation: int
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.generation}.{self.partition}.{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        fields = text.split(".")
        if len(fields) != 3 or not all(f.isdigit() and len(f) < 19 for f in fields):
            raise ValueError(f"position {text[:60]!r} is malformed: {TOKEN_RULE}")
        generation, partition, offset = (int(f) for f in fields)
        return cls(generation, partition, offset)


def reflects(
    position: Position,
    current: int,
    previous: Plan | None,
    fences: tuple[int, int] | None,
    applied_below: int | None,
) -> bool:
    """Whether a replica of generation ``current`` holds the write at ``position``, given
    the key's (fence, late fence) there (None: no value) and, on an active, the input
    offset its partition applied up to (None on a standby)."""
    if position.generation > current:
        return False
    if position.generation == current:
        if applied_below is not None and applied_below > position.offset:
            return True
        return fences is not None and fences[0] >= position.offset
    if previous is None or previous.source.number != position.generation:
        return True  # an older generation: drained before its switch and long retired
    barrier = previous.barrier or {}
    if position.offset < barrier.get(position.partition, 0):
        return True  # drained into the stores this generation was derived from
    return fences is not None and fences[1] >= position.offset
