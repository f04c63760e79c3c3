"""Read-your-writes positions: the token's form, and when a replica's value reflects a
write, in its own generation and across a repartitioning (backbone.node.positions)."""

from __future__ import annotations

import pytest

from backbone.node.positions import Position, reflects
from backbone.repartition.plan import Generation, Plan

G0, G1 = Generation(0, 6), Generation(1, 12)
SPLIT = Plan(source=G0, target=G1, requested_at=1.0, barrier={0: 100, 3: 40})


def test_a_token_round_trips() -> None:
    position = Position(1, 7, 123456)
    assert str(position) == "1.7.123456"
    assert Position.parse(str(position)) == position


@pytest.mark.parametrize("text", ["", "1.2", "1.2.3.4", "a.1.2", "-1.2.3", "1.2.x", "1..3"])
def test_a_malformed_token_is_refused_with_its_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"<generation>\.<partition>\.<offset>"):
        Position.parse(text)


def test_current_generation_uses_the_key_fence_or_the_active_input() -> None:
    at = Position(1, 3, 50)
    assert reflects(at, 1, SPLIT, (50, -1), None)  # the key applied it (a standby)
    assert not reflects(at, 1, SPLIT, (49, -1), None)
    assert not reflects(at, 1, SPLIT, None, None)
    # An active that applied its input past the offset: the event may have changed no
    # value (a dead letter), yet it was applied.
    assert reflects(at, 1, SPLIT, None, 51)
    assert not reflects(at, 1, SPLIT, (10, -1), 50)


def test_a_later_generation_is_not_reflected_yet() -> None:
    assert not reflects(Position(2, 0, 0), 1, SPLIT, (10**9, 10**9), 10**9)


def test_a_previous_generation_position_below_the_barrier_was_derived() -> None:
    assert reflects(Position(0, 0, 99), 1, SPLIT, None, None)
    assert reflects(Position(0, 3, 39), 1, SPLIT, (-1, 5), None)


def test_a_late_write_of_the_previous_generation_is_told_by_the_late_fence() -> None:
    late = Position(0, 3, 45)  # above partition 3's barrier: forwarded as a late record
    assert not reflects(late, 1, SPLIT, (-1, 39), None)
    assert not reflects(late, 1, SPLIT, None, 10**9)  # the new input's offsets say nothing
    assert reflects(late, 1, SPLIT, (-1, 45), None)


def test_an_older_or_retired_generation_is_reflected() -> None:
    assert reflects(Position(0, 3, 10**6), 2, None, None, None)
    assert reflects(Position(0, 3, 10**6), 1, None, None, None)
