"""Which partitions of the next generation a partition's keys go to, and back.

With ``murmur2(key) % N``, a key of old partition p lands in one of p, p+N, …, p+(k-1)N
when the count grows to k·N, and in p mod M when it shrinks to M = N/k. So a child's state
comes from one parent (split) or from the k parents ≡ child (mod M) (merge).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from backbone.partitioning import partition_for


class LayoutError(ValueError):
    """A partition count the service cannot move to from its current one."""


def check_counts(current: int, wanted: int) -> None:
    """Refuse what is not a split into k·N or a merge into N/k (k >= 2)."""
    if wanted < 1:
        raise LayoutError(f"--partitions must be at least 1, not {wanted}")
    if wanted == current:
        raise LayoutError(f"the service already has {current} partitions: nothing to do")
    if wanted > current and wanted % current:
        raise LayoutError(
            f"{current} -> {wanted} is not a split: the new count must be a multiple of "
            f"{current} (for example {2 * current} or {3 * current})"
        )
    if wanted < current and current % wanted:
        divisors = [d for d in range(1, current) if current % d == 0]
        raise LayoutError(
            f"{current} -> {wanted} is not a merge: the new count must divide {current} "
            f"(one of {', '.join(map(str, divisors))})"
        )


def children(parent: int, old: int, new: int) -> list[int]:
    """The partitions of the new layout that receive keys of ``parent``."""
    if new >= old:
        return list(range(parent, new, old))
    return [parent % new]


def parents(child: int, old: int, new: int) -> list[int]:
    """The partitions of the old layout whose keys ``child`` receives."""
    if new >= old:
        return [child % old]
    return list(range(child, old, new))


def child_of(key: bytes, new: int) -> int:
    return partition_for(key, new)


def split_keys(
    items: Iterable[tuple[bytes, bytes]], new: int, wanted: set[int]
) -> Iterator[tuple[int, bytes, bytes]]:
    """(child, key, value) for each item whose child is one of ``wanted``."""
    for key, value in items:
        child = partition_for(key, new)
        if child in wanted:
            yield child, key, value
