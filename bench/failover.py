"""Failover time: stop the node owning a partition, time until that partition's next
event is applied elsewhere. Each trial stops an owner with SIGTERM (planned: it leaves the
group itself) and then one with SIGKILL (unplanned: its peers remove it). 3 nodes in 3
zones, 1 standby, continuous load, a broker with default group settings. Prints one JSON
line: ``planned_*`` for SIGTERM, the others for SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
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
            durations: dict[str, list[float]] = {"SIGTERM": [], "SIGKILL": []}
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

                def version(i: int, key: str, not_by: str = "") -> int:
                    """As node ``i`` answers, -1 when it fails or ``not_by`` served it (a
                    node that stops with SIGTERM applies its last batches first)."""
                    try:
                        response = httpx.get(f"{nodes[i].url}/customers/{key}", timeout=2)
                    except httpx.HTTPError:
                        return -1
                    served_by = response.headers.get("x-backbone-served-by")
                    if response.status_code != 200 or served_by == not_by:
                        return -1
                    return int(response.json()["version"])

                def settled() -> bool:
                    statuses = [n.status() or {} for n in nodes]
                    active = sorted(p for s in statuses for p in s.get("active", []))
                    return all(s.get("ready") for s in statuses) and active == list(
                        range(PARTITIONS)
                    )

                def fail_over(partition: int, how: str) -> float:
                    key = keys[partition]
                    wait_until(settled, 120, "the cluster to settle", every=0.2)
                    wait_until(lambda p=partition: owner(p) is not None, 60, "an owner")
                    victim = owner(partition)
                    assert victim is not None
                    witness = (victim + 1) % 3
                    wait_until(lambda k=key, v=victim: version(v, k) > 1, 60, "events flowing")
                    before = version(victim, key)
                    started = time.monotonic()
                    process = nodes[victim].proc
                    assert process is not None
                    process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
                    wait_until(
                        lambda k=key, b=before, w=witness, g=nodes[victim].name: (
                            version(w, k, g) > b
                        ),
                        120,
                        "the partition to resume elsewhere",
                        every=0.02,
                    )
                    took = time.monotonic() - started
                    nodes[victim].stop()  # waits for it to exit
                    nodes[victim] = node(victim).start()
                    nodes[victim].wait_ready(timeout=90)
                    return took

                for trial in range(args.trials):
                    for n, (how, times) in enumerate(durations.items()):
                        partition = (2 * trial + n) % PARTITIONS
                        times.append(fail_over(partition, how))
                        print(
                            f"trial {trial} {how}: partition {partition} resumed after "
                            f"{times[-1]:.2f}s",
                            file=sys.stderr,
                        )
            finally:
                stop.set()
                if loader.is_alive():
                    loader.join(timeout=30)
                for n in nodes:
                    n.stop()
    planned, killed = durations["SIGTERM"], durations["SIGKILL"]
    result = {
        "trials": len(killed),
        "planned_min_s": round(min(planned), 2),
        "planned_median_s": round(statistics.median(planned), 2),
        "planned_max_s": round(max(planned), 2),
        "min_s": round(min(killed), 2),
        "median_s": round(statistics.median(killed), 2),
        "max_s": round(max(killed), 2),
        "partitions": PARTITIONS,
        **machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
