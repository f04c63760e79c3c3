"""The engine's murmur2 is Kafka's: the producer's default partitioner (aiokafka's, as the
Java client's) and the engine must put every key in the same partition."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.partitioning import murmur2, partition_for


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_murmur2_equals_kafkas_for_any_key(key: bytes) -> None:
    assert murmur2(key) == kafka_murmur2(key) & 0xFFFFFFFF


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=4096))
def test_partition_for_equals_the_default_partitioner(key: bytes, partitions: int) -> None:
    everything = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, everything, everything)


def test_known_values_of_the_java_client() -> None:
    # From org.apache.kafka.common.utils.UtilsTest#testMurmur2 (as signed 32-bit ints).
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536}
    for key, signed in cases.items():
        assert murmur2(key) == signed & 0xFFFFFFFF
