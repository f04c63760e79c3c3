"""`make demo`: bake a service, start a local Kafka, run a 3-node cluster, show it working.

Everything it starts is stopped again at the end (or on Ctrl-C).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
from cookiecutter.main import cookiecutter

from backbone.dev.cluster import wait_until
from backbone.dev.localkafka import LocalKafka
from backbone.partitioning import partition_for

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
ZONES = ["zone-a", "zone-b", "zone-c"]
PARTITIONS = 12


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def owner_of(nodes: list[Any], aggregate_id: str) -> Any:
    partition = partition_for(aggregate_id.encode(), PARTITIONS)
    for node in nodes:
        status = node.status() or {}
        if partition in status.get("active", []):
            return node
    raise RuntimeError(f"no node is active for partition {partition}")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    say("baking a service from the template (defaults: customer-backbone)")
    project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(WORK)))
    print(f"    {project}")
    sys.path.insert(0, str(project / "src"))
    from backbone.dev.cluster import NodeProcess

    say("starting a local Apache Kafka (KRaft) from Maven Central jars")
    with LocalKafka(WORK / "kafka", nodes=1) as kafka:
        print(f"    bootstrap: {kafka.brokers}")
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
            "PYTHONPATH": str(project / "src"),
            "INTERNAL_TOKEN": "demo-token",
        }
        nodes = [
            NodeProcess("customer_backbone", f"node-{i}", WORK / "nodes", {**env, "ZONE": zone})
            for i, zone in enumerate(ZONES)
        ]
        try:
            say("starting 3 service nodes in zones " + ", ".join(ZONES))
            for node in nodes:
                node.start()
            for node in nodes:
                status = node.wait_ready(timeout=90)
                print(f"    {node.name} {node.url} zone={status['zone']} active={status['active']}")
            wait_until(
                lambda: sum(len((n.status() or {}).get("active", [])) for n in nodes) == PARTITIONS,
                60,
                "all partitions to be active",
            )

            say("posting events for customer ada-1 (to node-0, whichever node owns it)")
            events = [
                {"type": "customer_registered", "name": "Ada", "email": "ada@example.com"},
                {"type": "order_placed", "order_id": "o-1", "amount_cents": 30_000},
                {"type": "order_placed", "order_id": "o-2", "amount_cents": 25_000},
                {"type": "loyalty_points_earned", "points": 120},
                {"type": "order_refunded", "order_id": "o-2", "amount_cents": 5_000},
            ]
            for event in events:
                response = httpx.post(f"{nodes[0].url}/customers/ada-1/events", json=event)
                print(f"    POST {event['type']:<22} -> {response.status_code} {response.json()}")
            bad = httpx.post(
                f"{nodes[0].url}/customers/ada-1/events",
                json={"type": "order_placed", "order_id": "o-3", "amount_cents": "lots"},
            )
            print(f"    POST a bad event             -> {bad.status_code} {bad.json()['detail']}")

            owner = owner_of(nodes, "ada-1")
            say(f"reading the aggregate through node-0 (routed to its owner, {owner.name})")

            def applied() -> Any:
                response = httpx.get(f"{nodes[0].url}/customers/ada-1")
                body = response.json() if response.status_code == 200 else {}
                return body if body.get("version") == len(events) else None

            print(json.dumps(wait_until(applied, 30, "the events to be applied"), indent=2))

            say("the assignment: one active and one standby per partition, in different zones")
            view = httpx.get(f"{nodes[0].url}/admin/assignment").json()["group"]
            for p, replicas in sorted(view["partitions"].items(), key=lambda i: int(i[0])):
                standbys = ", ".join(f"{r['node']} ({r['zone']})" for r in replicas["standbys"])
                active = replicas["active"]
                print(
                    f"    p{p:>2}: active {active['node']} ({active['zone']}), standby {standbys}"
                )
            print(f"    unmet constraints: {view['unmet'] or 'none'}")

            say("listing silver customers from the SQL read model")

            def listed() -> Any:
                items = httpx.get(f"{owner.url}/customers", params={"tier": "silver"}).json()
                return items if items.get("items") else None

            print(json.dumps(wait_until(listed, 30, "the read model"), indent=2))
        finally:
            say("stopping the nodes and Kafka")
            for node in nodes:
                node.stop()
    say(f"done; logs are under {WORK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
