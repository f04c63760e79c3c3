"""The assignor's bytes in the Kafka group protocol (msgpack, short field names, versioned).

Subscription (JoinGroup): each member's ``user_data`` is a :class:`MemberMetadata`: where it
runs, where it answers HTTP, what state it holds and what it owned in the last group generation.

Assignment (SyncGroup): each member's ``user_data`` is an :class:`AssignmentData` holding its
own standbys and the short list of constraints the leader gave up, nothing about other
members, so the SyncGroup request grows with the members' own tasks, not with the cluster.
The routing map every node needs is published by the leader to the routing topic instead:
see :mod:`backbone.assignment.view`.

Unknown fields are ignored on decoding, so a newer member may add fields (and bump
``version``) without breaking an older leader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

PROTOCOL_VERSION = 1


class MemberMetadata(
    msgspec.Struct,
    omit_defaults=True,
    rename={
        "version": "v",
        "node": "n",
        "zone": "z",
        "endpoint": "e",
        "offsets": "o",
        "active": "a",
        "standby": "s",
    },
):
    """What a member tells the group leader when it joins."""

    version: int = PROTOCOL_VERSION
    node: str = ""  # host; several members may run on one node
    zone: str = ""  # "" = unknown
    endpoint: str = ""  # base URL of its HTTP API, e.g. "http://10.1.2.3:8000"
    offsets: dict[int, int] = msgspec.field(default_factory=dict)  # changelog offset per store
    active: list[int] = msgspec.field(default_factory=list)  # previous group generation's actives
    standby: list[int] = msgspec.field(default_factory=list)  # previous group generation's standbys


class AssignmentData(
    msgspec.Struct, omit_defaults=True, rename={"version": "v", "standbys": "s", "unmet": "u"}
):
    """What the leader adds to a member's assignment: its own standbys, the unmet lines."""

    version: int = PROTOCOL_VERSION
    standbys: list[int] = msgspec.field(default_factory=list)
    unmet: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_metadata_decoder = msgspec.msgpack.Decoder(MemberMetadata)
_assignment_decoder = msgspec.msgpack.Decoder(AssignmentData)


def encode_metadata(
    node: str,
    zone: str,
    endpoint: str,
    offsets: Mapping[int, int],
    active: Iterable[int],
    standby: Iterable[int],
) -> bytes:
    return _encoder.encode(
        MemberMetadata(
            node=node,
            zone=zone,
            endpoint=endpoint,
            offsets=dict(sorted(offsets.items())),
            active=sorted(active),
            standby=sorted(standby),
        )
    )


def decode_metadata(data: bytes | None) -> MemberMetadata:
    """Empty bytes (a member that sent none) give the defaults: no node, zone ""."""
    if not data:
        return MemberMetadata()
    return _metadata_decoder.decode(data)


def encode_assignment(standbys: Iterable[int], unmet: Iterable[str] = ()) -> bytes:
    return _encoder.encode(AssignmentData(standbys=sorted(standbys), unmet=list(unmet)))


def decode_assignment(data: bytes | None) -> AssignmentData:
    if not data:
        return AssignmentData()
    return _assignment_decoder.decode(data)
