"""The event codec refuses fields an event does not declare, for every domain; upcasters
still turn an old shape, old fields included, into the current one first."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import pytest

from backbone import Context, Domain, Event, Handlers, Upcasters
from backbone.codec import TYPE_HEADER, VERSION_HEADER, DecodeError, EventCodec
from backbone.testing import TestDriver


class Thing(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str = ""
    size: int = 0


class Named(Event, frozen=True, kw_only=True):
    name: str | None = None


class Resized(Event, frozen=True, kw_only=True):
    """Version 2 renamed ``length`` to ``size``."""

    schema_version: ClassVar[int] = 2
    size: int


class Lenient(Event, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A domain may opt out on purpose, one event type at a time."""

    note: str = ""


handlers: Handlers[Thing] = Handlers()
upcasters = Upcasters()


@handlers.on(Named)
def named(state: Thing | None, event: Named, ctx: Context) -> Thing:
    current = state or Thing(id=ctx.aggregate_id)
    return msgspec.structs.replace(current, name=event.name or current.name)


@handlers.on(Resized)
def resized(state: Thing | None, event: Resized, ctx: Context) -> Thing:
    current = state or Thing(id=ctx.aggregate_id)
    return msgspec.structs.replace(current, size=event.size)


@handlers.on(Lenient)
def lenient(state: Thing | None, event: Lenient, ctx: Context) -> Thing:
    return state or Thing(id=ctx.aggregate_id)


@upcasters.register("resized", from_version=1)
def resized_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["size"] = data.pop("length")
    return data


DOMAIN = Domain(name="thing", aggregate=Thing, handlers=handlers, upcasters=upcasters)


@pytest.fixture
def codec() -> EventCodec:
    return EventCodec(DOMAIN)


def test_a_misspelt_field_is_refused_and_named(codec: EventCodec) -> None:
    with pytest.raises(DecodeError) as refused:
        codec.decode(b'{"type": "named", "nmae": "Bob"}')
    message = str(refused.value)
    assert "unknown field `nmae`" in message
    assert "named has the fields: name" in message


def test_the_type_tag_and_declared_fields_are_accepted(codec: EventCodec) -> None:
    assert codec.decode(b'{"type": "named", "name": "Bob"}') == Named(name="Bob")
    assert codec.decode(b'{"name": "Bob", "type": "named"}') == Named(name="Bob")
    assert codec.decode(b'{"type": "named"}') == Named()


def test_an_unknown_field_of_the_current_version_is_refused(codec: EventCodec) -> None:
    with pytest.raises(DecodeError, match="unknown field `length`"):
        codec.decode(b'{"type": "resized", "length": 3}')
    current = [(TYPE_HEADER, b"resized"), (VERSION_HEADER, b"2")]
    with pytest.raises(DecodeError, match="unknown field `length`"):
        codec.decode(b'{"type": "resized", "size": 1, "length": 3}', current)


def test_an_upcaster_still_accepts_the_old_shape(codec: EventCodec) -> None:
    old = [(TYPE_HEADER, b"resized"), (VERSION_HEADER, b"1")]
    assert codec.decode(b'{"type": "resized", "length": 3}', old) == Resized(size=3)
    # What the upcaster leaves behind is checked like any other input.
    with pytest.raises(DecodeError, match="unknown field `extra`"):
        codec.decode(b'{"type": "resized", "length": 3, "extra": 1}', old)


def test_an_event_type_may_opt_out(codec: EventCodec) -> None:
    assert codec.decode(b'{"type": "lenient", "other": 1}') == Lenient()


def test_unknown_fields_from_kafka_go_to_the_dlq_and_the_partition_goes_on() -> None:
    with TestDriver(DOMAIN) as driver:
        driver.send_raw(b"t-1", b'{"type": "named", "nmae": "Bob"}')
        driver.send_raw(b"t-1", b'{"type": "named", "name": "Ada"}')
        [letter] = driver.dead_letters
        assert letter.reason == "invalid_event"
        assert "unknown field `nmae`" in letter.error
        state = driver.get("t-1")
        assert state is not None and state.name == "Ada"


@pytest.mark.parametrize(
    ("value", "headers", "error"),
    [
        (b'{"type": "named", "name": 7}', (), "got `int` - at `$.name`"),
        (b'{"type": "named", "name": "Bo', (), "malformed JSON"),
        (b"", (), "empty record value"),
        (None, (), "empty record value"),
        (b'{"type": "renamed"}', (), "known event types: lenient, named, resized"),
        (b'{"type": "named", "name": "Bo', (("trace", b"x"),), "malformed JSON"),
    ],
)
def test_a_record_that_is_no_event_is_dead_lettered_in_the_same_words_with_or_without_headers(
    value: bytes | None, headers: tuple[tuple[str, bytes], ...], error: str
) -> None:
    with TestDriver(DOMAIN) as driver:
        driver.send_raw(b"t-1", value, headers)
        [letter] = driver.dead_letters
        assert letter.reason == "invalid_event"
        assert error in letter.error
        with pytest.raises(DecodeError) as raised:
            driver.applier.events.decode(value, headers)
        assert letter.error == str(raised.value)
