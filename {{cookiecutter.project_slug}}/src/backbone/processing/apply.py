"""Fold one batch of input records of one partition into its aggregates.

This is the only place events meet handlers: production and the test driver both call it,
so a handler unit test exercises the engine's real code path.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from backbone.codec import (
    ID_HEADER,
    LATE_HEADER,
    NO_OFFSET,
    AggregateCodec,
    DecodeError,
    EventCodec,
)
from backbone.domain import Context, Domain, DomainError, event_type_name
from backbone.ids import ID_RULE, id_problem
from backbone.store import PartitionStore

A = TypeVar("A", bound=msgspec.Struct)

# Records folded between pauses: about 10 ms of a CPU's work.
FOLD_STEP = 4096


class InputRecord(Protocol):
    """The fields of an aiokafka ``ConsumerRecord`` that processing reads."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: InputRecord
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class Emitted:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    input_offset: int = -1  # of the event whose handler emitted it


# An aggregate as folded so far: (fence, late fence, state).
Folded = tuple[int, int, Any]


@dataclass(slots=True)
class BatchResult:
    partition: int
    dirty: dict[bytes, bytes] = field(default_factory=dict)
    emitted: list[Emitted] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    next_offset: int = 0
    applied: int = 0
    skipped: int = 0
    late: int = 0  # late records (forwarded from the previous generation) applied
    last_input_offset: dict[bytes, int] = field(default_factory=dict)
    folded: dict[bytes, Folded] = field(default_factory=dict)  # of the keys in dirty


class BatchApplier(Generic[A]):
    def __init__(self, domain: Domain[A]) -> None:
        self.domain = domain
        self.events = EventCodec(domain)
        self.aggregates: AggregateCodec[A] = AggregateCodec(domain.aggregate)

    def apply(
        self,
        store: PartitionStore,
        records: Sequence[InputRecord],
        pending: dict[bytes, Folded] | None = None,
    ) -> BatchResult:
        """``fold`` without pauses."""
        steps = self.fold(store, records, pending)
        while (result := step(steps)) is None:
            pass
        return result

    def fold(
        self,
        store: PartitionStore,
        records: Sequence[InputRecord],
        pending: dict[bytes, Folded] | None = None,
    ) -> Generator[None, None, BatchResult]:
        """Fold ``records`` into their aggregates: from ``pending`` (the state of a batch
        not yet written to the store) where it has them, else from the store. Pauses (yields)
        after every ``FOLD_STEP`` records, so that a caller on an event loop lets it turn:
        the batch in flight's requests and acks progress meanwhile. Each key is still read,
        decoded and encoded once per call."""
        result = BatchResult(partition=store.partition)
        if not records:
            return result
        keys = list({r.key for r in records if r.key})
        # Per key, one list read and updated in place (one dict lookup per record):
        # [fence, late fence, state, aggregate id, what is wrong with the id, last input
        # offset applied in this batch (NO_OFFSET: none)].
        states: dict[bytes, list[Any]] = {}
        if pending:
            for key in keys:
                folded = pending.get(key)
                if folded is not None:
                    states[key] = [*folded, key.decode(), None, NO_OFFSET]
            keys = [k for k in keys if k not in states]
        decode = self.aggregates.decode_fenced
        for key, raw in zip(keys, store.get_many(keys), strict=True):
            if raw is None:
                # A stored aggregate's key was checked when it was made: new ones only.
                states[key] = [NO_OFFSET, NO_OFFSET, None, *_aggregate_id(key), NO_OFFSET]
            else:
                states[key] = [*decode(raw), key.decode(), None, NO_OFFSET]
        by_type = self.domain.handlers.by_type
        decode_event = self.events.decode
        decode_plain = self.events.decode_plain
        aggregate_type = self.domain.aggregate
        dead = result.dead
        applied = 0
        topic, partition = records[0].topic, records[0].partition  # one topic partition
        for start in range(0, len(records), FOLD_STEP):
            if start:
                yield
            for record in records[start : start + FOLD_STEP]:
                key = record.key or b""
                if not key:
                    dead.append(
                        DeadLetter(
                            record,
                            "missing_key",
                            "the record has no key: set it to the aggregate id",
                        )
                    )
                    continue
                state = states[key]
                offset = record.offset
                headers = record.headers
                late = _late_offset(headers) if headers else None
                if offset <= state[0] or (late is not None and late <= state[1]):
                    # Already applied before a crash (or forwarded twice): applying it again
                    # would count it twice.
                    result.skipped += 1
                    continue
                value = record.value
                try:
                    if headers or not value:
                        event = decode_event(value, headers)
                    else:
                        try:
                            event = decode_plain(value)
                        except Exception:  # decode says what is wrong, as it always has
                            event = decode_event(value, headers)
                except DecodeError as exc:
                    dead.append(DeadLetter(record, "invalid_event", str(exc)))
                    continue
                handler = by_type.get(type(event))
                if handler is None:
                    dead.append(
                        DeadLetter(
                            record,
                            "unhandled_type",
                            f"no handler for {event_type_name(type(event))!r}",
                        )
                    )
                    continue
                if state[4] is not None:  # the HTTP API could never read it back
                    dead.append(DeadLetter(record, "invalid_key", state[4]))
                    continue
                ctx = Context(state[3], topic, partition, offset, record.timestamp)
                try:
                    updated = handler(state[2], event, ctx)
                except DomainError as exc:
                    dead.append(DeadLetter(record, "rejected", str(exc)))
                    continue
                except Exception as exc:
                    dead.append(DeadLetter(record, "handler_error", f"{type(exc).__name__}: {exc}"))
                    continue
                if type(updated) is not aggregate_type and not isinstance(updated, aggregate_type):
                    dead.append(
                        DeadLetter(
                            record,
                            "handler_error",
                            f"handler returned {type(updated).__name__}, "
                            f"expected {aggregate_type.__name__}",
                        )
                    )
                    continue
                if late is not None:
                    state[1] = late
                    result.late += 1
                state[0] = state[5] = offset
                state[2] = updated
                applied += 1
                if ctx.emitted:
                    self._emit(result, record, key, ctx.emitted)
        result.applied = applied
        result.next_offset = records[-1].offset + 1
        encode = self.aggregates.encode
        for key, (fence, late_fence, aggregate, _, _, last) in states.items():
            if last == NO_OFFSET:
                continue
            result.last_input_offset[key] = last
            if aggregate is not None:
                result.dirty[key] = encode(fence, aggregate, late_fence)
                result.folded[key] = (fence, late_fence, aggregate)
        return result

    def _emit(
        self, result: BatchResult, record: InputRecord, key: bytes, events: tuple[Any, ...]
    ) -> None:
        for index, emitted in enumerate(events):
            value, headers = self.events.encode(emitted)
            event_id = f"{record.topic}/{record.partition}/{record.offset}/{index}"
            headers.append((ID_HEADER, event_id.encode()))
            result.emitted.append(Emitted(key, value, headers, record.offset))


def step(fold: Generator[None, None, BatchResult]) -> BatchResult | None:
    """Run ``fold`` to its next pause: None there, its result once it is done."""
    try:
        next(fold)
    except StopIteration as done:
        result: BatchResult = done.value
        return result
    return None


def _late_offset(headers: Sequence[tuple[str, bytes]]) -> int | None:
    """The old-topic offset of a late record (its last header), None for any other."""
    if headers[-1][0] != LATE_HEADER:
        return None
    return int(headers[-1][1].rpartition(b"/")[2])


def _aggregate_id(key: bytes) -> tuple[str, str | None]:
    """The id a key names, and what is wrong with it (None when nothing is)."""
    try:
        aggregate_id = key.decode()
    except UnicodeDecodeError:
        return "", "the key is not UTF-8 text"
    problem = id_problem(aggregate_id)
    return aggregate_id, None if problem is None else f"{problem}: {ID_RULE}"


def dead_letter_headers(letter: DeadLetter, now_ms: int | None = None) -> list[tuple[str, bytes]]:
    """Original headers plus why and where the record failed."""
    record = letter.record
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    return [
        *record.headers,
        ("dlq-reason", letter.reason.encode()),
        ("dlq-error", letter.error.encode()[:4096]),
        ("dlq-source-topic", record.topic.encode()),
        ("dlq-source-partition", str(record.partition).encode()),
        ("dlq-source-offset", str(record.offset).encode()),
        ("dlq-time-ms", str(stamp).encode()),
    ]
