"""Kafka's default partitioner, so producer, processor and query router agree on a key."""

from __future__ import annotations

import struct
from collections.abc import Callable

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
# Unpackers of n little-endian 32-bit words, made once per key length met.
_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), as an unsigned 32-bit int.

    Every read, write and routing decision hashes a key: aiokafka's version, which masks
    each step of a byte-by-byte loop, cost about twice as much for an id of a few bytes."""
    length = len(key)
    words = length >> 2
    h = _SEED ^ length
    if words:
        unpack = _WORDS.get(words)
        if unpack is None:
            unpack = _WORDS.setdefault(words, struct.Struct(f"<{words}I").unpack_from)
        for k in unpack(key):
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ (((k ^ (k >> 24)) * _M) & _MASK)
    rest = length & 3
    if rest:
        whole = words << 2
        if rest == 3:
            h ^= key[whole + 2] << 16
        if rest >= 2:
            h ^= key[whole + 1] << 8
        h = ((h ^ key[whole]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
