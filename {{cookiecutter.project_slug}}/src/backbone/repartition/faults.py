"""Named points where kill tests stop a process: of the repartitioning protocol, and of
``dlq replay`` (a batch sent, its transaction not committed). Without a hook (production)
they do nothing; ``backbone.dev.faults`` installs one from ``FAULT_KILL_AT``."""

from __future__ import annotations

from collections.abc import Callable

REPARTITION_POINTS = (
    "before_paused",
    "before_barrier",
    "before_drained",
    "before_derive",
    "before_derived",
    "before_switched",
    "after_switch",
)
POINTS = (*REPARTITION_POINTS, "dlq_replay_sent")

hook: Callable[[str], None] | None = None


def fault_point(name: str) -> None:
    if hook is not None:
        hook(name)
