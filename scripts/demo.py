"""`make demo`: bake a service, start a local Kafka, run a 3-node cluster, show it working:
routed reads, the zone-aware assignment, the read model, a failover, and a wiped node
copying its state back from its peers.

Everything it starts is stopped again at the end (or on Ctrl-C).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from backbone.dev.cluster import wait_until
from backbone.dev.localkafka import LocalKafka
from backbone.partitioning import partition_for

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
ZONES = ["zone-a", "zone-b", "zone-c"]
PARTITIONS = 12
ADMIN = {"authorization": "Bearer demo-admin-token"}


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
    # Quiet: the bake's "Next steps" are for a service of one's own, not this demo's copy.
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--no-input", "-o", str(WORK)]
    baked = subprocess.run(command, capture_output=True, text=True, check=False)
    if baked.returncode != 0:
        print(baked.stdout + baked.stderr, file=sys.stderr)
        return baked.returncode
    project = WORK / "customer-backbone"
    print(f"    {project}")
    sys.path.insert(0, str(project / "src"))
    from backbone.dev.cluster import NodeProcess

    say("starting a local Apache Kafka (KRaft) from Maven Central jars")
    with LocalKafka(WORK / "kafka", nodes=1) as kafka:
        print(f"    brokers: {kafka.brokers}")
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
            "PYTHONPATH": str(project / "src"),
            "INTERNAL_TOKEN": "demo-token",
            "ADMIN_TOKEN": "demo-admin-token",
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
            view = httpx.get(f"{nodes[0].url}/admin/assignment", headers=ADMIN).json()["group"]
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

            failover(nodes, owner, len(events))
            rejoin_wiped(nodes, owner, NodeProcess, env)
        finally:
            say("stopping the nodes and Kafka")
            for node in nodes:
                node.stop()
    say("done")
    print(f"    node logs: {WORK / 'nodes'}/<node>/node.log; Kafka: {WORK / 'kafka'}")
    print("    run it again with: make demo")
    return 0


def version_of(node: Any, aggregate_id: str) -> int | None:
    try:
        response = httpx.get(f"{node.url}/customers/{aggregate_id}", timeout=2)
    except httpx.HTTPError:
        return None
    return int(response.json()["version"]) if response.status_code == 200 else None


def failover(nodes: list[Any], owner: Any, version: int) -> None:
    say(f"failover: SIGKILL {owner.name}, the owner of ada-1")
    survivor = next(n for n in nodes if n is not owner)
    owner.kill()
    started = time.monotonic()
    wait_until(lambda: version_of(survivor, "ada-1") == version, 60, "another node to serve")
    new_owner = owner_of([n for n in nodes if n is not owner], "ada-1")
    print(
        f"    {new_owner.name} serves ada-1 after {time.monotonic() - started:.1f} s, "
        f"version {version}: nothing lost (its standby took over)"
    )


def rejoin_wiped(nodes: list[Any], killed: Any, node_process: Any, env: dict[str, str]) -> None:
    say(f"{killed.name} comes back with an empty disk: it copies its partitions from peers")
    shutil.rmtree(killed.data_dir, ignore_errors=True)
    index = nodes.index(killed)
    # BOOTSTRAP_MIN_LAG=0: copy even this demo's small partitions instead of replaying them.
    settings = {**env, "ZONE": ZONES[index], "BOOTSTRAP_MIN_LAG": "0"}
    fresh = node_process("customer_backbone", killed.name, WORK / "nodes", settings)
    seen = fresh.log_path.stat().st_size if fresh.log_path.exists() else 0
    nodes[index] = fresh.start()
    started = time.monotonic()
    fresh.wait_ready(timeout=120)

    def caught_up() -> bool:
        status = fresh.status() or {}
        lags = status.get("standby_lag", {})
        return bool(status.get("standby")) and all(lags.get(str(p)) == 0 for p in status["standby"])

    wait_until(caught_up, 120, "its standbys to catch up")
    copies = [
        json.loads(line)
        for line in fresh.log_path.read_bytes()[seen:].decode().splitlines()
        if '"bootstrap_finished"' in line
    ]
    status = fresh.status() or {}
    print(
        f"    ready after {time.monotonic() - started:.1f} s: active {status.get('active')}, "
        f"standby {status.get('standby')}, every standby 0 records behind"
    )
    names = {node.internal_url: node.name for node in nodes}  # peers copy over internal ports
    for copy in copies:
        print(
            f"    p{copy['partition']}: copied a checkpoint of {copy['bytes']} bytes from "
            f"{names.get(copy['source'], copy['source'])} in {copy['seconds']} s "
            f"({copy['mb_per_s']} MB/s)"
        )


if __name__ == "__main__":
    sys.exit(main())
