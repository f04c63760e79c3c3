"""In-process driver for handler unit tests: the engine's apply and store code, no Kafka.

with TestDriver(DOMAIN) as driver:
    driver.send("c-1", CustomerRegistered(name="Ada", email="ada@example.com"))
    assert driver.get("c-1").name == "Ada"

A handler that raises (anything but ``DomainError``) or returns something other than the
aggregate is a bug: the driver raises ``HandlerError`` with the engine's words, where a node
would send the event to the DLQ as ``handler_error``. ``TestDriver(DOMAIN, strict=False)``
collects it in ``dead_letters`` like any other, for a test of that path.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

import msgspec

from backbone.domain import Domain, Event
from backbone.partitioning import partition_for
from backbone.processing.apply import BatchApplier, DeadLetter
from backbone.store.registry import StoreRegistry

A = TypeVar("A", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


class HandlerError(AssertionError):
    """A handler failed on an event: what a node would dead-letter as ``handler_error``."""


class TestDriver(Generic[A]):
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        domain: Domain[A],
        partitions: int = 1,
        data_dir: Path | None = None,
        strict: bool = True,
    ):
        self._tmp = (
            tempfile.TemporaryDirectory(prefix="backbone-test-") if data_dir is None else None
        )
        root = Path(self._tmp.name) if self._tmp is not None else data_dir
        assert root is not None
        self.applier = BatchApplier(domain)
        self.stores = StoreRegistry(root, domain.name)
        self.partitions = partitions
        self.strict = strict
        self.topic = f"{domain.name}.events"
        self._next_offset: defaultdict[int, int] = defaultdict(int)
        self.emitted: list[tuple[str, Event]] = []
        self.dead_letters: list[DeadLetter] = []

    def send(self, aggregate_id: str, event: Event) -> None:
        value, headers = self.applier.events.encode(event)
        self.send_raw(aggregate_id.encode(), value, headers)

    def send_raw(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Feed bytes as another system would produce them (for decoding and DLQ tests)."""
        partition = partition_for(key, self.partitions) if key else 0
        offset = self._next_offset[partition]
        self._next_offset[partition] += 1
        record = Record(self.topic, partition, offset, int(time.time() * 1000), key, value, headers)
        self.replay([record])

    def replay(self, records: Sequence[Record]) -> None:
        """Apply records of one partition as one batch, exactly as the processor does."""
        store = self.stores.open(records[0].partition)
        result = self.applier.apply(store, records)
        store.write(result.dirty.items(), input_offset=result.next_offset)
        self.dead_letters.extend(result.dead)
        for emitted in result.emitted:
            self.emitted.append((emitted.key.decode(), self.applier.events.decode(emitted.value)))
        failed = [d for d in result.dead if d.reason == "handler_error"] if self.strict else []
        if failed:
            record = failed[0].record
            raise HandlerError(
                f"{failed[0].error} (aggregate {record.key!r}, offset {record.offset}); a node "
                "would send it to the DLQ as handler_error. TestDriver(..., strict=False) "
                "collects it in dead_letters instead"
            )

    def get(self, aggregate_id: str) -> A | None:
        key = aggregate_id.encode()
        raw = self.stores.open(partition_for(key, self.partitions)).get(key)
        if raw is None:
            return None
        _, aggregate = self.applier.aggregates.decode(raw)
        return aggregate

    def close(self) -> None:
        self.stores.close_all()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> TestDriver[A]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
