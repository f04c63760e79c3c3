"""The small interface through which the engine knows a service's domain.

A service defines its events (subclasses of :class:`Event`), one aggregate type and a
handler per event type. The engine never imports the service package: it receives a
:class:`Domain` value built by the service's wiring.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import msgspec


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    tag=_snake,
    forbid_unknown_fields=True,
):
    """Base of every domain event; serialised as JSON with a snake_case ``type`` tag.

    ``schema_version`` is carried in a record header; raise it when the shape changes and
    register an upcaster for the old version. A field the event does not declare is an
    error (400 over HTTP, the dead-letter topic from Kafka), so a misspelt field is never
    dropped silently; an upcaster turns an old shape, old fields included, into the current
    one before that check. A subclass declared with ``forbid_unknown_fields=False`` opts out.
    """

    schema_version: ClassVar[int] = 1


class DomainError(Exception):
    """Raised by a handler when an event is not valid for the aggregate's state.

    The event goes to the dead-letter topic with this message; the partition goes on.
    """


A = TypeVar("A", bound=msgspec.Struct)
E = TypeVar("E", bound=Event)


class Context(msgspec.Struct):
    """What a handler may know and do besides folding the event."""

    # A Struct, not a dataclass: one is made per event, and its __init__ runs in C. Few
    # handlers emit, so ``emitted`` starts as the shared empty tuple, not a new list.
    aggregate_id: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    emitted: tuple[Event, ...] = ()

    def emit(self, event: Event) -> None:
        """Publish ``event`` to the service's output topic once this event is applied."""
        self.emitted = (*self.emitted, event)


Handler = Callable[[A | None, E, Context], A]


class Handlers(Generic[A]):
    """Registry of one handler per event type, filled with the :meth:`on` decorator."""

    def __init__(self) -> None:
        self._by_type: dict[type[Event], Handler[A, Any]] = {}

    def on(self, event_type: type[E]) -> Callable[[Handler[A, E]], Handler[A, E]]:
        def register(fn: Handler[A, E]) -> Handler[A, E]:
            if event_type in self._by_type:
                raise ValueError(f"a handler for {event_type.__name__} is already registered")
            self._by_type[event_type] = fn
            return fn

        return register

    @property
    def by_type(self) -> Mapping[type[Event], Handler[A, Any]]:
        return self._by_type

    @property
    def event_types(self) -> tuple[type[Event], ...]:
        return tuple(self._by_type)


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    """Functions that lift an old event shape one version up, chained on decode."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def add(fn: Upcaster) -> Upcaster:
            self._steps[(event_type, from_version)] = fn
            return fn

        return add

    def upcast(
        self, event_type: str, version: int, target: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        while version < target:
            step = self._steps.get((event_type, version))
            if step is None:
                raise LookupError(
                    f"no upcaster registered for {event_type!r} from version {version} "
                    f"(current version is {target})"
                )
            data = step(data)
            version += 1
        return data


@dataclass(frozen=True)
class Domain(Generic[A]):
    """Everything the engine needs to know about a service's domain."""

    name: str
    aggregate: type[A]
    handlers: Handlers[A]
    events: tuple[type[Event], ...] = ()
    upcasters: Upcasters = field(default_factory=Upcasters)

    def event_types(self) -> tuple[type[Event], ...]:
        """Every event the service accepts: the handled ones plus those only emitted."""
        seen: dict[type[Event], None] = dict.fromkeys(self.handlers.event_types)
        seen.update(dict.fromkeys(self.events))
        return tuple(seen)


def event_type_name(event_type: type[Event]) -> str:
    tag = event_type.__struct_config__.tag
    return tag if isinstance(tag, str) else _snake(event_type.__name__)


def types_by_name(types: Iterable[type[Event]]) -> dict[str, type[Event]]:
    return {event_type_name(t): t for t in types}
