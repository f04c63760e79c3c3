"""Processing rate of one service process: 12 partitions, 100k keys, 1M events in the topic.

The events are produced before the node starts. In the same run a bare aiokafka consumer
reads the whole topic first (``raw_consumer_events_per_s``, the ceiling); then the node
processes it, with changelog writes and offset commits on. The node's own clock gives the
rate: from the start of its first batch to the end of its last (``applied`` in
``/health/ready``), and the CPU its process spent between (``cpu_us_per_event``, all
threads). A sample of aggregates is checked against a reference computed here from the
events. Prints one JSON line.

``--nodes N`` runs N nodes on this machine, as one machine's worth of them would run: one
``NODE_HOST``, so the assignor treats them as one machine, and the partitions split between
them. The rate is then from the first batch of any node to the last of any, and
``cpu_us_per_event`` sums their CPU; ``peak_rss_mb`` is the largest node's.

``--workers N`` runs each node as N processes (``WORKERS``), on one public port: the
partitions split between them as between nodes, and the figures add up as for ``--nodes``.
The bare consumer is one process either way.

``--read-model on`` runs the node's SQL read model (SQLite under DATA_DIR, the service's
default; of several workers, worker 0 projects into it) too: the clock then stops when the
read model has caught up as well (its lag in ``/health/ready`` is 0), and its table is
checked to hold one row per key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev.cluster import wait_until

from _common import bake, machine, peak_rss_mb

PARTITIONS = 12
SERVICE = "bench-throughput"


Reference = dict[str, tuple[int, int, int]]  # (lifetime value, orders, loyalty points)


async def produce(brokers: str, events: int, keys: int) -> Reference:
    """Produce the events; returns what every aggregate must end as."""
    from backbone.partitioning import partition_for

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    await admin.create_topics([NewTopic(f"{SERVICE}.events", PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks=1, linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    encode = msgspec.json.encode
    rng = random.Random(7)
    topic = f"{SERVICE}.events"
    batches = {p: producer.create_batch() for p in range(PARTITIONS)}
    pending = []

    async def add(key: bytes, value: bytes) -> None:
        p = partition_for(key, PARTITIONS)
        if batches[p].append(key=key, value=value, timestamp=None) is None:
            pending.append(await producer.send_batch(batches[p], topic, partition=p))
            batches[p] = producer.create_batch()
            batches[p].append(key=key, value=value, timestamp=None)

    for i in range(keys):
        body = {
            "type": "customer_registered",
            "name": f"Customer {i}",
            "email": f"c{i}@example.com",
        }
        await add(f"c-{i}".encode(), encode(body))
    value = [0] * keys
    orders = [0] * keys
    points = [0] * keys
    for n in range(events - keys):
        i = rng.randrange(keys)
        if n % 4 == 3:
            points[i] += 1 + n % 50
            body = {"type": "loyalty_points_earned", "points": 1 + n % 50}
        else:
            value[i] += 100 + n % 900
            orders[i] += 1
            body = {"type": "order_placed", "order_id": f"o-{n}", "amount_cents": 100 + n % 900}
        await add(f"c-{i}".encode(), encode(body))
    for p, batch in batches.items():
        if batch.record_count():
            pending.append(await producer.send_batch(batch, topic, partition=p))
    await asyncio.gather(*pending)
    await producer.stop()
    return {f"c-{i}": (value[i], orders[i], points[i]) for i in range(keys)}


async def raw_consume(brokers: str, topic: str) -> tuple[int, float, float]:
    """A bare aiokafka consumer reads every partition of ``topic`` to its end: (records,
    seconds from the first record to the last, CPU seconds of this process meanwhile)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = sum(ends.values())
        count, first, cpu = 0, 0.0, 0.0
        while remaining > 0:
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            if not count and batches:
                first, cpu = time.monotonic(), time.process_time()
            for records in batches.values():
                count += len(records)
                remaining -= len(records)
        return count, time.monotonic() - first, time.process_time() - cpu
    finally:
        await consumer.stop()


async def changelog_records(brokers: str) -> int:
    """Records in the node's changelog topics (their end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers)
    await consumer.start()
    try:
        names = [t for t in await consumer.topics() if t.startswith(SERVICE) and "changelog" in t]
        tps = [TopicPartition(t, p) for t in names for p in range(PARTITIONS)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def node_pids(node: Any) -> list[int]:
    """The node's process, or with WORKERS its workers."""
    assert node.proc is not None
    children = psutil.Process(node.proc.pid).children()
    return [c.pid for c in children] or [node.proc.pid]


def check_sample(url: str, reference: Reference, size: int = 500) -> int:
    """GETs a random sample of aggregates; fails on any that differs from the reference."""
    sample = random.Random(11).sample(sorted(reference), min(size, len(reference)))
    with httpx.Client(timeout=10) as client:
        for key in sample:
            answer = client.get(f"{url}/customers/{key}")
            assert answer.status_code == 200, f"{key}: {answer.status_code} {answer.text}"
            body = answer.json()
            got = (body["lifetime_value_cents"], body["order_count"], body["loyalty_points"])
            assert got == reference[key], f"{key}: {got}, expected {reference[key]}"
    return len(sample)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument(
        "--read-model",
        choices=("on", "off"),
        default="off",
        help="run the SQL read model (SQLite) and wait for it to catch up (default off)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="WORKERS of each node: its processes, each with a share of the partitions",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes on this machine, sharing one NODE_HOST (default 1: one service process)",
    )
    args = parser.parse_args()
    read_model = args.read_model == "on"
    if args.nodes < 1 or args.workers < 1 or (args.nodes > 1 and read_model):
        parser.error("--nodes and --workers must be 1 or more, and --nodes 1 with --read-model on")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        project = bake(work)
        from backbone.dev.cluster import NodeProcess
        from backbone.dev.localkafka import LocalKafka

        with LocalKafka(work / "kafka", nodes=1) as kafka:
            started = time.monotonic()
            reference = asyncio.run(produce(kafka.brokers, args.events, args.keys))
            print(
                f"produced {args.events} events in {time.monotonic() - started:.1f}s",
                file=sys.stderr,
            )
            raw, raw_s, raw_cpu = asyncio.run(raw_consume(kafka.brokers, f"{SERVICE}.events"))
            assert raw == args.events, f"the bare consumer read {raw} events"
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                "SERVICE_NAME": SERVICE,
                "PARTITIONS": str(PARTITIONS),
                "PYTHONPATH": str(project / "src"),
                "LOG_LEVEL": "warning",
                "READ_MODEL": args.read_model,
                "MAX_BATCH_RECORDS": os.environ.get("MAX_BATCH_RECORDS", "100000"),
                "WORKERS": str(args.workers),
            }
            if args.nodes > 1:  # reads of the sample are forwarded between them
                env.update(NODE_HOST="bench-machine", INTERNAL_TOKEN="bench-internal-token")
            names = ["bench"] if args.nodes == 1 else [f"bench-{i}" for i in range(args.nodes)]
            nodes = [NodeProcess("customer_backbone", name, work, env) for name in names]
            for node in nodes:
                node.start()
            try:

                def ready(node: NodeProcess) -> dict[str, Any]:
                    try:
                        body: dict[str, Any] = httpx.get(
                            f"{node.url}/health/ready", timeout=5
                        ).json()
                    except httpx.HTTPError:
                        return {}
                    return body

                def statuses() -> list[dict[str, Any]]:
                    """Every worker's: a node's /health/ready includes its other workers'."""
                    found = []
                    for node in nodes:
                        body = ready(node)
                        found.extend([body, *body.get("workers", {}).values()])
                    return [b for b in found if b.get("node")]

                def processed() -> int:
                    return sum(
                        int(b.get("processed", 0)) + int(b.get("dead_letters", 0))
                        for b in statuses()
                    )

                def caught_up() -> bool:
                    section = ready(nodes[0]).get("read_model")
                    return isinstance(section, dict) and section.get("lag") == 0

                wait_until(lambda: processed() >= args.events, 1800, "the last event", 0.05, nodes)
                final = statuses()
                assert len(final) == args.nodes * args.workers, [b["node"] for b in final]
                applied = [body["applied"] for body in final]
                started_at = min(a["first_at"] for a in applied if a["first_at"])
                seconds = max(a["last_at"] for a in applied if a["last_at"]) - started_at
                cpu_s = sum(a["cpu_s"] for a in applied)
                first = time.monotonic() - (time.time() - started_at)
                checked = check_sample(nodes[0].url, reference)
                extra: dict[str, object] = {}
                if read_model:
                    wait_until(caught_up, 1800, "the read model's lag at 0", 0.02, nodes)
                    with_read_model = time.monotonic() - first
                    db = sqlite3.connect(nodes[0].data_dir / "readmodel.db")
                    rows = db.execute("SELECT count(*) FROM customers").fetchone()[0]
                    db.close()
                    assert rows == args.keys, f"{rows} rows in the read model, not {args.keys}"
                    written = ready(nodes[0]).get("read_model", {}).get("rows_written")
                    extra = {
                        "read_model": "on",
                        "read_model_rows_written": written,
                        "read_model_rows": rows,
                        "read_model_caught_up_s": round(with_read_model, 2),
                        "events_per_s_read_model_caught_up": round(args.events / with_read_model),
                    }
                rss = max(peak_rss_mb(pid) for node in nodes for pid in node_pids(node))
            finally:
                for node in nodes:
                    node.stop()
            changelog = asyncio.run(changelog_records(kafka.brokers))
    rate = args.events / seconds
    raw_rate = raw / raw_s
    result = {
        "events": args.events,
        "nodes": args.nodes,
        "workers": args.workers,
        "keys": args.keys,
        "partitions": PARTITIONS,
        "seconds": round(seconds, 2),
        "events_per_s": round(rate),
        "raw_consumer_events_per_s": round(raw_rate),
        "ratio_to_raw": round(rate / raw_rate, 3),
        "cpu_us_per_event": round(cpu_s / args.events * 1e6, 2),
        "raw_consumer_cpu_us_per_event": round(raw_cpu / raw * 1e6, 2),
        "changelog_records": changelog,
        "sample_checked": checked,
        "peak_rss_mb": rss,
        **extra,
        **machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
