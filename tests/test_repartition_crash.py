"""Repartitioning survives a SIGKILL at every step (issue 11).

3 nodes in 3 zones with 1 standby. Each round changes the count (4 -> 8 -> 4 -> ...) with
every node armed to SIGKILL itself at one step of the protocol (``FAULT_KILL_AT``, see
``backbone.repartition.faults``): whichever node reaches it first dies there, the node
that drives the change included. Then every other node is SIGKILLed too, once with a
disk wiped twice, and all restart unarmed. The change must complete by itself, and every
aggregate must equal the reference folded from the acknowledged events. At the end every
standby store equals its active's, byte for byte, and no replicas share a zone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from test_repartition import Ledger, cli, settled, stores, wait_matching

from backbone.dev.cluster import NodeProcess, wait_until
from backbone.repartition.faults import REPARTITION_POINTS

from clustertools import Service, assignment, new_service
from conftest import Bake

pytestmark = pytest.mark.kafka

PLURAL = "customers"


def post_batch(ledger: Ledger, nodes: list[NodeProcess], count: int) -> None:
    """``count`` keys' worth of events, each acknowledged (202) before the next."""
    turn = itertools.cycle(nodes)
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            key, events, after = ledger.next_events()
            for body in events:
                answer = client.post(f"{next(turn).url}/{PLURAL}/{key}/events", content=body)
                assert answer.status_code == 202, answer.text
            ledger.state[key] = after
            ledger.sent += len(events)


def answers(node: NodeProcess) -> bool:
    try:
        return httpx.get(f"{node.url}/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_node(service: Service, i: int, faults: dict[str, str] | None) -> NodeProcess:
    """Node ``i``, answering HTTP. The free port a node is given can be taken by another
    process before the node binds it (seen in CI): such a node is started again."""
    for _ in range(3):
        node = service.node(i, faults=faults).start()
        try:
            wait_until(lambda node=node: answers(node), 60, f"node-{i} to answer")
            return node
        except TimeoutError:
            node.kill()
    raise AssertionError(f"node-{i} never answered on its HTTP port:\n{node.log_tail()}")


def start_all(service: Service, faults: dict[str, str] | None) -> list[NodeProcess]:
    return [start_node(service, i, faults) for i in range(3)]


def until_settled(nodes: list[NodeProcess], generation: int, count: int, what: str) -> None:
    wait_until(lambda: settled(nodes, generation, count), 180, f"{what}: generation {generation}")


def until_one_dies(nodes: list[NodeProcess], point: str) -> None:
    wait_until(lambda: any(not n.alive() for n in nodes), 90, f"a node to die at {point}")


def until_retired(node: NodeProcess, service: Service, old: int) -> None:
    """The nodes retire the previous generation by themselves: its topics go."""

    suffix = "" if old == 0 else f"-g{old}"

    def retired() -> bool:
        view = json.loads(cli(node, "repartition", "--status").splitlines()[-1])
        topics = set(asyncio.run(list_topics(service.brokers)))
        return "previous_generation" not in view and f"{service.name}.events{suffix}" not in topics

    wait_until(retired, 60, f"generation {old} and its topics to be retired")


async def list_topics(brokers: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def killed_at(node: NodeProcess, point: str) -> bool:
    for line in node.log_path.read_text(errors="replace").splitlines()[-400:]:
        if '"fault_kill"' in line and json.loads(line).get("point") == point:
            return True
    return False


def test_a_kill_at_every_step_leaves_a_change_that_completes(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    project = bake()
    service = new_service(
        "crash-split",
        project,
        kafka_brokers,
        tmp_path,
        4,
        STANDBY_REPLICAS="1",
        REPARTITION_RETIRE_AFTER_S="5",  # the nodes retire each old generation by themselves
    )
    ledger = Ledger("k", 60)
    nodes = start_all(service, None)
    counts = itertools.cycle([8, 4])
    generation, partitions = 0, 4
    try:
        wait_until(lambda: settled(nodes, 0, 4), 120, "the first generation to settle")
        for round_number, point in enumerate(REPARTITION_POINTS):
            post_batch(ledger, nodes, 30)
            for node in nodes:
                node.stop()
            nodes = start_all(service, {"FAULT_KILL_AT": point})
            until_settled(nodes, generation, partitions, "armed nodes")
            post_batch(ledger, nodes, 20)  # input the old generation must drain

            wanted = next(counts)
            cli(nodes[0], "repartition", "--partitions", str(wanted), "--no-wait")
            until_one_dies(nodes, point)
            dead = [n for n in nodes if not n.alive()]
            assert any(killed_at(n, point) for n in dead), [n.log_tail(5) for n in dead]
            for node in nodes:
                node.kill()
            # A disk lost mid-change, too: its partitions come back as copies of standbys,
            # whose stores carry an older input offset than the group committed.
            if point in ("before_drained", "before_derive"):
                shutil.rmtree(nodes[1].data_dir)

            nodes = start_all(service, None)
            generation, partitions = generation + 1, wanted
            until_settled(nodes, generation, partitions, f"round {round_number} ({point})")
            wait_matching(nodes, [ledger], PLURAL, f"every aggregate after a kill at {point}")
            until_retired(nodes[0], service, generation - 1)

        view = assignment(nodes[0])["group"]
        assert view["zone_conflicts"] == [], view
    finally:
        for node in nodes:
            node.stop()

    held = {n.name: stores(n, generation) for n in nodes}
    for p, replicas in view["partitions"].items():
        active = held[replicas["active"]["node"]][int(p)]
        assert active, f"partition {p} is empty"
        for standby in replicas["standbys"]:
            assert held[standby["node"]][int(p)] == active, f"standby of {p} differs"
