"""Cold bootstrap vs changelog replay for one partition holding at least 1 GB of state.

The changelog of a 1-partition service is filled with 2.2M aggregates (~500 bytes each, not
very compressible). Node A starts with an empty disk and replays it (b); node B then joins
as A's standby with an empty disk and copies A's checkpoint (a). Both times come from the
nodes' own restore/bootstrap log events. B starts once A is idle: A's replay leaves RocksDB
compactions running in the background, and their cost belongs to the replay, not to the
copy. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev.cluster import wait_until

from _common import bake, machine

SERVICE = "bench-bootstrap"
TOKEN = "bench-token"


async def fill_changelog(brokers: str, aggregates: int) -> int:
    """Writes the changelog an active would have written; returns its payload bytes."""
    from customer_backbone.domain.aggregate import Customer

    from backbone.codec import AggregateCodec

    codec = AggregateCodec(Customer)
    topic = f"{SERVICE}.customer-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    config = {"cleanup.policy": "compact"}
    await admin.create_topics(
        [NewTopic(f"{SERVICE}.events", 1, 1), NewTopic(topic, 1, 1, topic_configs=config)]
    )
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks=1, max_batch_size=1 << 20)
    await producer.start()
    total = 0
    pending = []
    batch = producer.create_batch()
    for i in range(aggregates):
        noise = base64.b64encode(os.urandom(420)).decode()
        state = Customer(
            id=f"c-{i}", name=f"Customer {i} {noise[:200]}", email=f"{noise[200:]}@example.com"
        )
        key, value = f"c-{i}".encode(), codec.encode(i, state)
        total += len(key) + len(value)
        if batch.append(key=key, value=value, timestamp=None) is None:
            pending.append(await producer.send_batch(batch, topic, partition=0))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    pending.append(await producer.send_batch(batch, topic, partition=0))
    await asyncio.gather(*pending)
    await producer.stop()
    return total


def events_of(path: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"{name}"' in line and line.startswith("{"):
            found.append(json.loads(line))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aggregates", type=int, default=2_200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(
        prefix="bench-bootstrap-", dir=os.environ.get("BENCH_TMP")
    ) as tmp:
        work = Path(tmp)
        project = bake(work)
        from backbone.dev.cluster import NodeProcess
        from backbone.dev.localkafka import LocalKafka

        with LocalKafka(work / "kafka", nodes=1) as kafka:
            started = time.monotonic()
            payload = asyncio.run(fill_changelog(kafka.brokers, args.aggregates))
            print(
                f"changelog filled: {payload / 1e9:.2f} GB in {time.monotonic() - started:.0f}s",
                file=sys.stderr,
            )
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                "SERVICE_NAME": SERVICE,
                "PARTITIONS": "1",
                "STANDBY_REPLICAS": "1",
                "PYTHONPATH": str(project / "src"),
                "READ_MODEL": "off",
                "INTERNAL_TOKEN": TOKEN,
                "LOG_LEVEL": "info",
            }
            a = NodeProcess("customer_backbone", "node-a", work, {**env, "ZONE": "zone-a"})
            b = NodeProcess("customer_backbone", "node-b", work, {**env, "ZONE": "zone-b"})
            try:
                a.start()
                a.wait_ready(timeout=1800)
                [replay] = events_of(a.log_path, "restore_finished")
                assert a.proc is not None
                node_a = psutil.Process(a.proc.pid)
                idle_from = time.monotonic()
                wait_until(lambda: node_a.cpu_percent(interval=1.0) < 10, 600, "node A idle")
                print(f"node A idle after {time.monotonic() - idle_from:.0f}s", file=sys.stderr)
                b.start()

                def caught_up() -> bool:
                    lag = (b.status() or {}).get("standby_lag", {})
                    return isinstance(lag, dict) and lag.get("0") == 0

                wait_until(caught_up, 1800, "node B to hold partition 0", every=0.2)
                [boot] = events_of(b.log_path, "bootstrap_finished")
                for name in ("checkpoint_serving", "checkpoint_served"):
                    print(json.dumps(events_of(a.log_path, name)), file=sys.stderr)
            finally:
                b.stop()
                a.stop()
    state_bytes = int(boot["total_bytes"])
    result = {
        "aggregates": args.aggregates,
        "state_bytes": state_bytes,
        "changelog_bytes": payload,
        "bootstrap_s": boot["seconds"],
        "replay_s": replay["seconds"],
        "bootstrap_mb_s": round(state_bytes / boot["seconds"] / 1e6, 1),
        "replay_mb_s": round(replay["bytes"] / replay["seconds"] / 1e6, 1),
        "speedup": round(replay["seconds"] / boot["seconds"], 1),
        **machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
