"""The test driver fails a handler unit test on a handler's bug, in the engine's words, and
keeps what a node dead-letters for a business rule (or, asked to, for a bug) in
``dead_letters``."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from backbone import Context, Domain, DomainError, Event, Handlers
from backbone.testing import HandlerError, TestDriver


class Thing(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    n: int = 0


class Added(Event, frozen=True, kw_only=True):
    n: int


class Dicted(Event, frozen=True, kw_only=True):
    pass


handlers: Handlers[Thing] = Handlers()


@handlers.on(Added)
def added(state: Thing | None, event: Added, ctx: Context) -> Thing:
    if event.n < 0:
        raise DomainError("n must not be negative")
    if event.n == 13:
        raise KeyError("thirteen")
    current = state or Thing(id=ctx.aggregate_id)
    return msgspec.structs.replace(current, n=current.n + event.n)


@handlers.on(Dicted)
def dicted(state: Thing | None, event: Dicted, ctx: Context) -> Any:
    return {"id": ctx.aggregate_id}  # the bug: not a Thing


DOMAIN = Domain(name="things", aggregate=Thing, handlers=handlers)


def test_a_handler_returning_something_else_fails_the_test_in_words() -> None:
    with TestDriver(DOMAIN) as driver, pytest.raises(HandlerError) as failed:
        driver.send("t-1", Dicted())
    said = str(failed.value)
    assert said.startswith("handler returned dict, expected Thing (aggregate b't-1', offset 0)")
    assert "strict=False" in said


def test_a_handler_raising_fails_the_test_and_the_events_before_it_stay_applied() -> None:
    with TestDriver(DOMAIN) as driver:
        driver.send("t-1", Added(n=2))
        with pytest.raises(HandlerError, match="KeyError: 'thirteen'"):
            driver.send("t-1", Added(n=13))
        state = driver.get("t-1")
        assert state is not None and state.n == 2


def test_a_rejected_event_is_a_dead_letter_not_a_failure() -> None:
    with TestDriver(DOMAIN) as driver:
        driver.send("t-1", Added(n=-1))
        [letter] = driver.dead_letters
        assert (letter.reason, letter.error) == ("rejected", "n must not be negative")


def test_not_strict_collects_handler_errors_as_a_node_dead_letters_them() -> None:
    with TestDriver(DOMAIN, strict=False) as driver:
        driver.send("t-1", Dicted())
        driver.send("t-1", Added(n=13))
        driver.send("t-1", Added(n=1))
        assert [letter.reason for letter in driver.dead_letters] == ["handler_error"] * 2
        state = driver.get("t-1")
        assert state is not None and state.n == 1
