"""`make demo`: start a local Kafka and one node of this service per zone, post events, read
back."""

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx

from backbone.dev.cluster import NodeProcess, wait_until
from backbone.dev.localkafka import LocalKafka

from {{ cookiecutter.package_name }}.app import SERVICE

WORK = Path(".demo").resolve()
ZONES = [{% for zone in cookiecutter.zones.split(",") %}"{{ zone }}"{% if not loop.last %}, {% endif %}{% endfor %}]


def active_total(nodes: list[NodeProcess]) -> int:
    total = 0
    for node in nodes:
        active = (node.status() or {}).get("active")
        total += len(active) if isinstance(active, list) else 0
    return total


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    with LocalKafka(WORK / "kafka", nodes=1) as kafka:
        print(f"==> Kafka at {kafka.brokers}")
        nodes = [
            NodeProcess(
                "{{ cookiecutter.package_name }}",
                f"node-{i}",
                WORK,
                {
                    "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                    "ZONE": zone,
                    "INTERNAL_TOKEN": "demo-token",
                },
            )
            for i, zone in enumerate(ZONES)
        ]
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_ready(timeout=90)
                print(f"==> {node.name} ready at {node.url}")
            wait_until(lambda: active_total(nodes) == SERVICE.partitions, 60, "every partition")
            url = f"{nodes[0].url}/{SERVICE.plural}/demo-1"
            for event in [
                {"type": "customer_registered", "name": "Ada", "email": "ada@example.com"},
                {"type": "order_placed", "order_id": "o-1", "amount_cents": 60_000},
                {"type": "loyalty_points_earned", "points": 50},
            ]:
                response = httpx.post(f"{url}/events", json=event)
                print(f"==> POST {event['type']}: {response.status_code} {response.json()}")

            def read() -> Any:
                for node in nodes:
                    response = httpx.get(f"{node.url}/{SERVICE.plural}/demo-1")
                    if response.status_code == 200 and response.json()["version"] == 3:
                        return response.json()
                return None

            print(json.dumps(wait_until(read, 30, "the aggregate"), indent=2))
        finally:
            for node in nodes:
                node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
