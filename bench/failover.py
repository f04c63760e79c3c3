"""Failover time: SIGKILL the node owning a partition, time until that partition's next
event is applied elsewhere. 3 nodes in 3 zones, 1 standby, continuous load, a broker with
default group settings. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev.cluster import wait_until

from _common import bake, machine

PARTITIONS = 6
SERVICE = "bench-failover"
ZONES = ["zone-a", "zone-b", "zone-c"]


def keys_per_partition() -> dict[int, str]:
    from backbone.partitioning import partition_for

    keys: dict[int, str] = {}
    n = 0
    while len(keys) < PARTITIONS:
        key = f"f-{n}"
        keys.setdefault(partition_for(key.encode(), PARTITIONS), key)
        n += 1
    return keys


async def load(brokers: str, keys: dict[int, str], stop: threading.Event) -> None:
    """Registers one customer per partition, then earns a point for each every 20 ms."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    await admin.create_topics([NewTopic(f"{SERVICE}.events", PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    topic = f"{SERVICE}.events"
    encode = msgspec.json.encode
    try:
        for key in keys.values():
            body = {"type": "customer_registered", "name": "F", "email": "f@x.io"}
            await producer.send_and_wait(topic, encode(body), key=key.encode())
        while not stop.is_set():
            for key in keys.values():
                body = {"type": "loyalty_points_earned", "points": 1}
                await producer.send(topic, encode(body), key=key.encode())
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        project = bake(work)
        from backbone.dev.cluster import NodeProcess
        from backbone.dev.localkafka import LocalKafka

        keys = keys_per_partition()
        with LocalKafka(work / "kafka", nodes=1) as kafka:
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                "SERVICE_NAME": SERVICE,
                "PARTITIONS": str(PARTITIONS),
                "STANDBY_REPLICAS": "1",
                "PYTHONPATH": str(project / "src"),
                "INTERNAL_TOKEN": "bench-token",
                "READ_MODEL": "off",
                "LOG_LEVEL": "warning",
            }

            def node(i: int) -> NodeProcess:
                return NodeProcess(
                    "customer_backbone", f"node-{i}", work, {**env, "ZONE": ZONES[i]}
                )

            stop = threading.Event()
            loader = threading.Thread(target=lambda: asyncio.run(load(kafka.brokers, keys, stop)))
            nodes = [node(i).start() for i in range(3)]
            durations: list[float] = []
            try:
                for n in nodes:
                    n.wait_ready(timeout=90)
                loader.start()

                def owner(partition: int) -> int | None:
                    for i, n in enumerate(nodes):
                        status = n.status() or {}
                        if status.get("ready") and partition in status.get("active", []):
                            return i
                    return None

                def version(i: int, key: str) -> int:
                    try:
                        response = httpx.get(f"{nodes[i].url}/customers/{key}", timeout=2)
                    except httpx.HTTPError:
                        return -1
                    return int(response.json()["version"]) if response.status_code == 200 else -1

                for trial in range(args.trials):
                    partition = trial % PARTITIONS
                    key = keys[partition]

                    def settled() -> bool:
                        statuses = [n.status() or {} for n in nodes]
                        active = sorted(p for s in statuses for p in s.get("active", []))
                        return all(s.get("ready") for s in statuses) and active == list(
                            range(PARTITIONS)
                        )

                    wait_until(settled, 120, "the cluster to settle", every=0.2)
                    wait_until(lambda p=partition: owner(p) is not None, 60, "an owner")
                    victim = owner(partition)
                    assert victim is not None
                    witness = (victim + 1) % 3
                    wait_until(lambda k=key, v=victim: version(v, k) > 1, 60, "events flowing")
                    before = version(victim, key)
                    started = time.monotonic()
                    nodes[victim].kill()
                    wait_until(
                        lambda k=key, b=before, w=witness: version(w, k) > b,
                        120,
                        "the partition to resume elsewhere",
                        every=0.02,
                    )
                    durations.append(time.monotonic() - started)
                    print(
                        f"trial {trial}: partition {partition} resumed after {durations[-1]:.2f}s",
                        file=sys.stderr,
                    )
                    nodes[victim] = node(victim).start()
                    nodes[victim].wait_ready(timeout=90)
            finally:
                stop.set()
                if loader.is_alive():
                    loader.join(timeout=30)
                for n in nodes:
                    n.stop()
    result = {
        "trials": len(durations),
        "min_s": round(min(durations), 2),
        "median_s": round(statistics.median(durations), 2),
        "max_s": round(max(durations), 2),
        "partitions": PARTITIONS,
        **machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
