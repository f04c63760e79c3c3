"""Which changelog topic a follower of every partition (the read model) reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChangelogSource:
    topic: str
    partitions: int
    # The changelog offset a complete follower may start at: a new generation's
    # changelog starts at 1, after its base, which its previous generation's holds.
    first_offset: int = 0
