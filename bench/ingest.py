"""HTTP ingest: POSTs to one node, with the service's defaults (read model on, SQLite).

One node and a local Kafka. The keys are registered first, straight through the events
topic; then ``wrk`` (2 threads) POSTs ``loyalty_points_earned`` (1 point) to those keys in a
cycle, at concurrency 1 and then 64, and measures ``GET /health/live`` at the same
concurrency as the HTTP stack's own ceiling. A 202 means Kafka acknowledged the event
(``acks=all``). At the end every key is read back (batchGet): the points applied must be at
least the POSTs answered 202, and at most that plus the requests wrk left in flight.

The node has a core to itself where the machine has two or more: Kafka, ``wrk`` and this
process share the others (``CpuSplit``), as clients and brokers are other machines in
production. ``--shared-cpus`` lets them all run on every core instead.

Prints one JSON line per concurrency: {"posts", "concurrency", "post_rps", "post_p50_ms",
"post_p99_ms", "live_rps", ...}; the last line is the one for 64.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev.cluster import wait_until

from _common import CpuSplit, bake, machine
from _wrk import ms, wrk

SERVICE = "bench-ingest"
PLURAL = "customers"
POINT = msgspec.json.encode({"type": "loyalty_points_earned", "points": 1}).decode()


async def register(brokers: str, keys: list[str], partitions: int) -> None:
    from backbone.partitioning import partition_for

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{SERVICE}.events", partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=10)
    await producer.start()
    try:
        encode = msgspec.json.encode
        sent = [
            await producer.send(
                f"{SERVICE}.events",
                encode({"type": "customer_registered", "name": key, "email": f"{key}@x.io"}),
                key=key.encode(),
                partition=partition_for(key.encode(), partitions),
            )
            for key in keys
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def points(url: str, keys: list[str]) -> int | None:
    """Points applied over every key; None while some key cannot be read."""
    total = 0
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(keys), 1000):
            ids = keys[start : start + 1000]
            answer = client.post(f"{url}/{PLURAL}:batchGet", json={"ids": ids})
            if answer.status_code != 200:
                return None
            body = answer.json()
            if body["failed"] or body["missing"]:
                return None
            total += sum(int(v["loyalty_points"]) for v in body["items"].values())
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=15, help="seconds per wrk measure")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--read-model", choices=("on", "off"), default="on")
    parser.add_argument(
        "--shared-cpus", action="store_true", help="no core of its own for the node"
    )
    args = parser.parse_args()
    cpus = CpuSplit(shared=args.shared_cpus)
    keys = [f"c-{i}" for i in range(args.keys)]
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        scripts = work / "wrk"
        scripts.mkdir()
        project = bake(work)
        from backbone.dev.cluster import NodeProcess
        from backbone.dev.localkafka import LocalKafka

        with LocalKafka(work / "kafka", nodes=1) as kafka:
            asyncio.run(register(kafka.brokers, keys, args.partitions))
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                "SERVICE_NAME": SERVICE,
                "PARTITIONS": str(args.partitions),
                "PYTHONPATH": str(project / "src"),
                "INTERNAL_TOKEN": "bench-token",
                "READ_MODEL": args.read_model,
                "LOG_LEVEL": "info",
                "ZONE": "zone-a",
            }
            with cpus.node_side():
                node = NodeProcess("customer_backbone", "node-0", work, env).start()
            try:
                node.wait_ready(120)
                wait_until(
                    lambda: points(node.url, keys) == 0, 120, "every key registered", 0.1, [node]
                )
                posts = [(f"/{PLURAL}/{key}/events", POINT) for key in keys]
                headers = {"content-type": "application/json"}
                accepted = in_flight = 0
                for concurrency in (1, 64):
                    found = wrk(
                        node.url,
                        posts,
                        connections=concurrency,
                        duration=args.duration,
                        scripts=scripts,
                        name=f"post-c{concurrency}",
                        method="POST",
                        headers=headers,
                    )
                    live = wrk(
                        node.url,
                        [("/health/live", "")],
                        connections=concurrency,
                        duration=args.duration,
                        scripts=scripts,
                        name=f"live-c{concurrency}",
                    )
                    accepted += found["requests"] - found["non2xx"]
                    in_flight += concurrency
                    lines.append(
                        {
                            "posts": found["requests"],
                            "concurrency": concurrency,
                            "post_rps": found["rps"],
                            "post_p50_ms": ms(found["p50_us"]),
                            "post_p99_ms": ms(found["p99_us"]),
                            "live_rps": live["rps"],
                            "post_to_live": round(found["rps"] / live["rps"], 3),
                            "post_errors": found["errors"],
                            "live_errors": live["errors"],
                        }
                    )
                applied: int | None = None

                def caught_up() -> bool:
                    nonlocal applied
                    applied = points(node.url, keys)
                    return applied is not None and applied >= accepted

                started = time.monotonic()
                wait_until(caught_up, 300, "every accepted POST to be applied", 0.1, [node])
                assert applied is not None
                if applied > accepted + in_flight:
                    raise AssertionError(
                        f"{applied} points applied for {accepted} POSTs answered 202 and at "
                        f"most {in_flight} in flight: events were applied twice"
                    )
                catch_up_s = round(time.monotonic() - started, 2)
            finally:
                node.stop()
    for line in lines:
        line.update(
            accepted_total=accepted,
            applied_total=applied,
            catch_up_s=catch_up_s,
            read_model=args.read_model,
            machine=machine(),
            **cpus.describe(),
            loadavg_1m=round(os.getloadavg()[0], 2),
        )
        print(json.dumps(line))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
