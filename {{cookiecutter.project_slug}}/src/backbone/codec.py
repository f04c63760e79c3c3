"""Bytes on Kafka and in RocksDB <-> domain values.

Events are JSON (readable by other systems); their type and schema version also travel in
record headers so that old shapes can be upcast. Aggregates are msgpack, prefixed by the
input offset of the last event applied to them: the aggregate's fence, below which
input records are skipped as already applied, so a record read again is never applied twice.

After a repartitioning an aggregate has two fences: the offset in its new partition, and
the offset in its old partition of the last late record (one a producer still sent to the
old topic, forwarded to the new one). Offsets of different partitions are not comparable,
so each source has its own fence (docs/decisions/0016-repartitioning.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, Union

import msgspec

from backbone.domain import Domain, Event, event_type_name, types_by_name

A = TypeVar("A", bound=msgspec.Struct)

Headers = Sequence[tuple[str, bytes]]

TYPE_HEADER = "event-type"
VERSION_HEADER = "schema-version"
ID_HEADER = "event-id"
# The last header of a late record forwarded from the previous generation's topic:
# "<partition>/<offset>" there. Last, so that the hot path looks at one header only.
LATE_HEADER = "late-from"

_OFFSET = struct.Struct(">q")
_FENCES = struct.Struct(">qq")
NO_OFFSET = -1
# First byte of a value with two fences. A one-fence value starts with the high byte of a
# big-endian offset, 0x00 (offset >= 0) or 0xFF (NO_OFFSET), never 0x01.
TWO_FENCES = 1


class DecodeError(ValueError):
    """The record is not a valid event; the message says why, for the DLQ and for 4xx."""


def header(headers: Headers, name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class EventCodec:
    def __init__(self, domain: Domain[Any]) -> None:
        types = domain.event_types()
        if not types:
            raise ValueError("the domain declares no event types")
        self._by_name = types_by_name(types)
        union: Any = Union[tuple(types)] if len(types) > 1 else types[0]  # noqa: UP007
        self._decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(union)
        # The value of a record without headers (so no old schema version), in one C call;
        # its errors are msgspec's: ``decode`` says what is wrong in the DLQ's words.
        self.decode_plain = self._decoder.decode
        self._encoder = msgspec.json.Encoder()
        self._upcasters = domain.upcasters
        # A record of the newest version needs no upcasting, whatever its type.
        self._newest = str(max(t.schema_version for t in types)).encode()

    @property
    def type_names(self) -> list[str]:
        return sorted(self._by_name)

    def decode(self, value: bytes | None, headers: Headers = ()) -> Event:
        if not value:
            raise DecodeError("empty record value: expected a JSON event")
        version = header(headers, VERSION_HEADER) if headers else None
        try:
            if version is not None and version != self._newest:
                name = (header(headers, TYPE_HEADER) or b"").decode()
                event_type = self._by_name.get(name)
                if event_type is not None and int(version) < event_type.schema_version:
                    data = msgspec.json.decode(value, type=dict[str, Any])
                    data = self._upcasters.upcast(
                        name, int(version), event_type.schema_version, data
                    )
                    return msgspec.convert(data, type=event_type)
            return self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            raise DecodeError(self._explain(str(exc), value)) from exc
        except msgspec.DecodeError as exc:
            raise DecodeError(f"malformed JSON: {exc}") from exc
        except (LookupError, ValueError) as exc:
            raise DecodeError(str(exc)) from exc

    def _explain(self, message: str, value: bytes) -> str:
        if "at `$.type`" in message:
            return f"{message}; known event types: {', '.join(self.type_names)}"
        if message.startswith("Object contains unknown field") and "at `$." not in message:
            event_type = self._type_of(value)
            if event_type is not None:
                fields = ", ".join(event_type.__struct_fields__) or "none"
                return f"{message}; {event_type_name(event_type)} has the fields: {fields}"
        return message

    def _type_of(self, value: bytes) -> type[Event] | None:
        try:
            name = msgspec.json.decode(value, type=dict[str, Any]).get("type")
        except msgspec.MsgspecError:
            return None
        return self._by_name.get(name) if isinstance(name, str) else None

    def encode(self, event: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
        headers = [
            (TYPE_HEADER, event_type_name(type(event)).encode()),
            (VERSION_HEADER, str(type(event).schema_version).encode()),
        ]
        return self._encoder.encode(event), headers


class AggregateCodec(Generic[A]):
    """Stored value = 8-byte input offset of the last applied event + msgpack aggregate, or
    ``TWO_FENCES`` + that offset + the late fence + msgpack aggregate."""

    def __init__(self, aggregate: type[A]) -> None:
        self._decoder = msgspec.msgpack.Decoder(aggregate)
        self._encoder = msgspec.msgpack.Encoder()
        self._json = msgspec.json.Encoder()

    def encode(self, offset: int, aggregate: A, late: int = NO_OFFSET) -> bytes:
        if late == NO_OFFSET:
            return _OFFSET.pack(offset) + self._encoder.encode(aggregate)
        return bytes((TWO_FENCES,)) + _FENCES.pack(offset, late) + self._encoder.encode(aggregate)

    def decode(self, value: bytes) -> tuple[int, A]:
        offset, _, aggregate = self.decode_fenced(value)
        return offset, aggregate

    def decode_fenced(self, value: bytes) -> tuple[int, int, A]:
        """(fence, late fence, aggregate)."""
        if value[0] == TWO_FENCES:
            offset, late = _FENCES.unpack_from(value, 1)
            return offset, late, self._decoder.decode(memoryview(value)[17:])
        return _OFFSET.unpack_from(value)[0], NO_OFFSET, self._decoder.decode(memoryview(value)[8:])

    def to_json(self, aggregate: A) -> bytes:
        return self._json.encode(aggregate)


def rebase_fence(value: bytes) -> bytes:
    """The value for a new generation's store: its input topic starts again at offset 0, so
    the fence starts over, and the old fence becomes the late fence of the old partition."""
    if value[0] == TWO_FENCES:
        offset = _OFFSET.unpack_from(value, 1)[0]
        payload = memoryview(value)[17:]
    else:
        offset = _OFFSET.unpack_from(value)[0]
        payload = memoryview(value)[8:]
    return bytes((TWO_FENCES,)) + _FENCES.pack(NO_OFFSET, offset) + bytes(payload)
