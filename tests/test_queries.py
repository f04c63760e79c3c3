"""Queries as a distributed database (issue 12), on 3 nodes in 3 zones with 1 standby and a
real broker: every key read from every node gives the same answer, which the reference
folded from the produced events predicts; ``consistency=any`` is answered by a standby,
with its lag; a write's position makes a GET on another node read it; batchGet gathers
keys held by every node; an admin scan pages through a partition; and while a partition's
owner is gone, reads of it answer 503 with Retry-After, never hang.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from backbone.dev.cluster import NodeProcess, wait_until
from backbone.partitioning import partition_for

from clustertools import (
    INTERNAL_TOKEN,
    assignment,
    make_stream,
    new_service,
    produce_over_time,
    status,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 6
AUTH = {"authorization": f"Bearer {INTERNAL_TOKEN}"}


def settled(nodes: list[NodeProcess]) -> bool:
    statuses = [status(n) for n in nodes]
    if not all(s.get("ready") for s in statuses):
        return False
    actives = sorted(p for s in statuses for p in s.get("active", []))
    standbys = [p for s in statuses for p in s.get("standby", [])]
    return actives == list(range(PARTITIONS)) and len(standbys) == PARTITIONS


def routes(node: NodeProcess) -> dict[int, tuple[str, list[str]]]:
    """partition -> (active node, standby nodes), as the node's routing view has it."""
    view = assignment(node)["group"]
    return {
        int(p): (r["active"]["node"], [s["node"] for s in r["standbys"]])
        for p, r in view["partitions"].items()
    }


def seen(answer: httpx.Response) -> tuple[int, int]:
    body = answer.json()
    return body["lifetime_value_cents"], body["order_count"]


def order(amount: int, n: int) -> bytes:
    return msgspec.json.encode(
        {"type": "order_placed", "order_id": f"q{n}", "amount_cents": amount}
    )


def test_reads_from_every_node_replica_and_position(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    project = bake()
    service = new_service(
        "queries",
        project,
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        STANDBY_REPLICAS="1",
        READ_YOUR_WRITES_TIMEOUT_MS="1500",
    )
    nodes = [service.node(i).start() for i in range(3)]
    by_name = {n.name: n for n in nodes}
    try:
        wait_until(lambda: settled(nodes), 120, "3 nodes with every partition and a standby")
        events, reference = make_stream(keys=48, orders=400, seed=12)
        asyncio.run(produce_over_time(kafka_brokers, f"{service.name}.events", events, 200, 0))
        keys = sorted(reference)
        with httpx.Client(timeout=10) as client:

            def all_match() -> bool:
                return all(
                    (a := client.get(f"{n.url}/customers/{k}")).status_code == 200
                    and seen(a) == reference[k]
                    for k in keys
                    for n in nodes
                )

            wait_until(all_match, 60, "every key, read from every node, to match the reference")
            view = routes(nodes[0])
            assert sorted(view) == list(range(PARTITIONS))

            # Active reads: whichever node is asked, the owner answers, and says so.
            for key, node in zip(keys, itertools.cycle(nodes)):
                p = partition_for(key.encode(), PARTITIONS)
                answer = client.get(f"{node.url}/customers/{key}")
                assert answer.headers["x-backbone-served-by"] == view[p][0]
                assert answer.headers["x-backbone-role"] == "active"
                assert answer.headers["x-backbone-partition"] == str(p)
                assert int(answer.headers["x-backbone-offset"]) > 0

            # consistency=any on a node that holds a standby: that standby answers.
            for key in keys:
                p = partition_for(key.encode(), PARTITIONS)
                standby = by_name[view[p][1][0]]
                answer = client.get(f"{standby.url}/customers/{key}?consistency=any")
                assert answer.status_code == 200 and seen(answer) == reference[key]
                assert answer.headers["x-backbone-role"] == "standby"
                assert answer.headers["x-backbone-served-by"] == standby.name
                assert int(answer.headers["x-backbone-lag"]) >= 0

            # Read-your-writes across nodes: POST to one node, GET with its position from
            # another, in either consistency; no waiting between them.
            expected = dict(reference)
            for n, key in enumerate(keys[:24]):
                writer, reader = nodes[n % 3], nodes[(n + 1) % 3]
                posted = client.post(f"{writer.url}/customers/{key}/events", content=order(7, n))
                assert posted.status_code == 202, posted.text
                position = posted.json()["position"]
                assert posted.headers["x-backbone-position"] == position
                total, count = expected[key]
                expected[key] = (total + 7, count + 1)
                level = "any" if n % 2 else "active"
                answer = client.get(
                    f"{reader.url}/customers/{key}",
                    params={"position": position, "consistency": level},
                )
                assert answer.status_code == 200, answer.text
                assert seen(answer) == expected[key], (key, level, answer.headers)

            # Positions that cannot be honoured are refused, or time out, with a reason.
            key = keys[0]
            p = partition_for(key.encode(), PARTITIONS)
            bad = client.get(f"{nodes[0].url}/customers/{key}", params={"position": "x.1"})
            assert bad.status_code == 400 and "position" in bad.json()["detail"]
            other = (p + 1) % PARTITIONS
            wrong = client.get(
                f"{nodes[0].url}/customers/{key}", params={"position": f"0.{other}.1"}
            )
            assert wrong.status_code == 400 and f"partition {p}" in wrong.json()["detail"]
            ahead = client.get(
                f"{nodes[1].url}/customers/{key}", params={"position": f"0.{p}.99999999"}
            )
            assert ahead.status_code == 504 and "99999999" in ahead.json()["detail"]
            level = client.get(f"{nodes[0].url}/customers/{key}", params={"consistency": "stale"})
            assert level.status_code == 400 and "consistency" in level.json()["detail"]

            # batchGet: keys held by every node, unknown ids and an invalid one, per id.
            unknown = ["nobody-1", "nobody-2"]
            answer = client.post(
                f"{nodes[2].url}/customers:batchGet",
                json={"ids": keys + unknown + [".."]},
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            got = {
                k: (v["lifetime_value_cents"], v["order_count"]) for k, v in body["items"].items()
            }
            assert got == expected
            assert sorted(body["missing"]) == unknown
            assert list(body["failed"]) == [".."] and "id" in body["failed"][".."]
            assert {view[partition_for(k.encode(), PARTITIONS)][0] for k in keys} == set(by_name)
            too_many = client.post(f"{nodes[0].url}/customers:batchGet", json={"ids": ["a"] * 1001})
            assert too_many.status_code == 400 and "BATCH_GET_MAX_IDS" in too_many.json()["detail"]

            # Admin scan of one partition, paged by key, asked of a node that does not hold it.
            p = partition_for(keys[0].encode(), PARTITIONS)
            outsider = next(n for n in nodes if n.name not in (view[p][0], *view[p][1]))
            pages: list[dict[str, Any]] = []
            after = None
            while True:
                params: dict[str, Any] = {"limit": 3}
                if after is not None:
                    params["after"] = after
                page = client.get(
                    f"{outsider.internal_url}/internal/partitions/{p}/aggregates",
                    params=params,
                    headers=AUTH,
                )
                assert page.status_code == 200, page.text
                pages.append(page.json())
                after = pages[-1]["next"]
                if after is None:
                    break
            ids = [item["id"] for page in pages for item in page["items"]]
            assert ids == sorted(k for k in keys if partition_for(k.encode(), PARTITIONS) == p)
            assert all(len(page["items"]) <= 3 for page in pages) and len(pages) > 1
            unauthorised = client.get(f"{outsider.internal_url}/internal/partitions/{p}/aggregates")
            assert unauthorised.status_code == 401

            # The owner of a partition is gone: reads of it answer 503 with Retry-After at
            # once (no hang) until the group moves it; consistency=any is served meanwhile.
            victim = nodes[2]
            owned = [
                k for k in keys if view[partition_for(k.encode(), PARTITIONS)][0] == victim.name
            ]
            assert owned
            victim.kill()
            key = owned[0]
            gone = client.get(f"{nodes[0].url}/customers/{key}")
            assert gone.status_code == 503, gone.text
            assert gone.headers["retry-after"]
            p = partition_for(key.encode(), PARTITIONS)
            holder = by_name[view[p][1][0]]
            if holder is not victim:
                spare = client.get(f"{holder.url}/customers/{key}?consistency=any")
                assert spare.status_code == 200 and seen(spare) == expected[key]
            survivors = nodes[:2]

            def moved() -> bool:
                answers = [client.get(f"{n.url}/customers/{k}") for k in owned for n in survivors]
                for answer in answers:
                    assert answer.status_code in (200, 503), answer.text
                    if answer.status_code == 503:
                        assert answer.headers["retry-after"]
                return all(a.status_code == 200 for a in answers)

            wait_until(moved, 90, "the dead owner's partitions to be served again")
            for k in owned:
                assert seen(client.get(f"{nodes[0].url}/customers/{k}")) == expected[k]
    finally:
        for node in nodes:
            node.stop()
