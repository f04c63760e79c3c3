"""Handler unit tests on the in-process driver: the engine's own apply and store code."""

from collections.abc import Iterator

import msgspec
import pytest

from backbone.codec import TYPE_HEADER, VERSION_HEADER
from backbone.partitioning import partition_for
from backbone.testing import Record, TestDriver

from {{ cookiecutter.package_name }}.domain import DOMAIN
from {{ cookiecutter.package_name }}.domain.aggregate import {{ cookiecutter.aggregate_class }}
from {{ cookiecutter.package_name }}.domain.events import (
    CustomerRegistered,
    LoyaltyPointsEarned,
    OrderPlaced,
    OrderRefunded,
    ProfileUpdated,
    TierChanged,
)

Driver = TestDriver[{{ cookiecutter.aggregate_class }}]


@pytest.fixture
def driver() -> Iterator[Driver]:
    with TestDriver(DOMAIN, partitions=4) as d:
        yield d


def register(driver: Driver, aggregate_id: str = "c-1") -> None:
    driver.send(aggregate_id, CustomerRegistered(name="Ada", email="ada@example.com"))


def test_registration_creates_the_aggregate(driver: Driver) -> None:
    register(driver)
    state = driver.get("c-1")
    assert state is not None
    assert (state.id, state.name, state.email, state.tier) == (
        "c-1",
        "Ada",
        "ada@example.com",
        "bronze",
    )
    assert driver.get("c-2") is None


def test_orders_and_refunds_fold_into_lifetime_value(driver: Driver) -> None:
    register(driver)
    driver.send("c-1", OrderPlaced(order_id="o-1", amount_cents=1_000))
    driver.send("c-1", OrderPlaced(order_id="o-2", amount_cents=2_500))
    driver.send("c-1", OrderRefunded(order_id="o-1", amount_cents=1_000))
    driver.send("c-1", LoyaltyPointsEarned(points=7))
    state = driver.get("c-1")
    assert state is not None
    assert state.lifetime_value_cents == 2_500
    assert state.order_count == 2
    assert state.refunded_cents == 1_000
    assert state.loyalty_points == 7
    assert state.version == 5


def test_profile_update_keeps_unset_fields(driver: Driver) -> None:
    register(driver)
    driver.send("c-1", ProfileUpdated(email="ada@lovelace.org"))
    state = driver.get("c-1")
    assert state is not None
    assert (state.name, state.email) == ("Ada", "ada@lovelace.org")


def test_tier_change_is_emitted_once_per_change(driver: Driver) -> None:
    register(driver)
    driver.send("c-1", OrderPlaced(order_id="o-1", amount_cents=49_999))
    assert driver.emitted == []
    driver.send("c-1", OrderPlaced(order_id="o-2", amount_cents=1))
    driver.send("c-1", OrderPlaced(order_id="o-3", amount_cents=1))
    assert driver.emitted == [("c-1", TierChanged(previous="bronze", tier="silver"))]
    driver.send("c-1", OrderRefunded(order_id="o-3", amount_cents=10_000))
    assert driver.emitted[-1] == ("c-1", TierChanged(previous="silver", tier="bronze"))
    state = driver.get("c-1")
    assert state is not None and state.tier == "bronze"


def test_events_for_unregistered_aggregates_are_dead_lettered(
    driver: Driver,
) -> None:
    driver.send("ghost", OrderPlaced(order_id="o-1", amount_cents=5))
    assert driver.get("ghost") is None
    [letter] = driver.dead_letters
    assert letter.reason == "rejected"
    assert "'ghost' is not registered" in letter.error


def test_refund_above_lifetime_value_is_rejected_and_state_unchanged(
    driver: Driver,
) -> None:
    register(driver)
    driver.send("c-1", OrderPlaced(order_id="o-1", amount_cents=100))
    driver.send("c-1", OrderRefunded(order_id="o-1", amount_cents=101))
    state = driver.get("c-1")
    assert state is not None and state.lifetime_value_cents == 100
    assert [d.reason for d in driver.dead_letters] == ["rejected"]


def test_double_registration_is_rejected(driver: Driver) -> None:
    register(driver)
    register(driver)
    assert [d.reason for d in driver.dead_letters] == ["rejected"]


def test_undecodable_and_unknown_events_are_dead_lettered(
    driver: Driver,
) -> None:
    register(driver)
    driver.send_raw(b"c-1", b"\xff not json")
    driver.send_raw(b"c-1", b'{"type": "teleported"}')
    driver.send_raw(b"c-1", b'{"type": "order_placed", "order_id": "o", "amount_cents": -5}')
    driver.send_raw(None, b'{"type": "loyalty_points_earned", "points": 1}')
    reasons = [(d.reason, d.error) for d in driver.dead_letters]
    assert [r for r, _ in reasons] == [
        "invalid_event",
        "invalid_event",
        "invalid_event",
        "missing_key",
    ]
    assert "known event types" in reasons[1][1]
    assert "$.amount_cents" in reasons[2][1]
    state = driver.get("c-1")
    assert state is not None and state.order_count == 0


def test_a_misspelt_field_is_dead_lettered_naming_it(driver: Driver) -> None:
    register(driver)
    driver.send_raw(b"c-1", b'{"type": "profile_updated", "nmae": "Bob"}')
    [letter] = driver.dead_letters
    assert letter.reason == "invalid_event"
    assert "unknown field `nmae`" in letter.error
    state = driver.get("c-1")
    assert state is not None and (state.name, state.version) == ("Ada", 1)


def test_an_old_field_without_the_old_version_header_is_dead_lettered(driver: Driver) -> None:
    register(driver)
    driver.send_raw(b"c-1", b'{"type": "order_placed", "order_id": "o-1", "amount": 12.34}')
    [letter] = driver.dead_letters
    assert "unknown field `amount`" in letter.error


def test_old_order_placed_shape_is_upcast(driver: Driver) -> None:
    register(driver)
    driver.send_raw(
        b"c-1",
        b'{"type": "order_placed", "order_id": "o-1", "amount": 12.34}',
        [(TYPE_HEADER, b"order_placed"), (VERSION_HEADER, b"1")],
    )
    state = driver.get("c-1")
    assert state is not None and state.lifetime_value_cents == 1_234
    assert driver.dead_letters == []


def test_an_event_at_or_below_the_fence_is_not_applied_twice(
    driver: Driver,
) -> None:
    """After a crash the input is read again from the last commit: replayed offsets are skipped."""
    partition = partition_for(b"c-1", driver.partitions)
    register_value, register_headers = driver.applier.events.encode(
        CustomerRegistered(name="Ada", email="ada@example.com")
    )
    order_value, order_headers = driver.applier.events.encode(
        OrderPlaced(order_id="o-1", amount_cents=100)
    )
    first = Record("t", partition, 0, 0, b"c-1", register_value, register_headers)
    second = Record("t", partition, 1, 0, b"c-1", order_value, order_headers)
    driver.replay([first, second])
    driver.replay([first, second])
    state = driver.get("c-1")
    assert state is not None
    assert (state.order_count, state.lifetime_value_cents) == (1, 100)
    assert driver.dead_letters == []


def test_aggregate_round_trips_through_msgpack() -> None:
    state_type = {{ cookiecutter.aggregate_class }}
    state = state_type(id="c", name="n", email="e@x.io", lifetime_value_cents=3)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=state_type) == state
