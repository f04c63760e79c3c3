"""WORKERS > 1: one node as several processes (backbone.workers) on one public port."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backbone.dev.cluster import NodeProcess, wait_until
from backbone.http.metrics import merged
from backbone.settings import EngineSettings, SettingsError
from backbone.workers import MIN_UPTIME_S, WORKER_ENV, siblings, worker_env

from clustertools import make_stream, new_service, produce_over_time

PARTITIONS = 6


def settings(**env: str) -> EngineSettings:
    return EngineSettings.from_env("svc", "customer", PARTITIONS, 0, env)


def test_each_worker_gets_its_own_id_store_directory_and_internal_port() -> None:
    node = settings(WORKERS="3", NODE_ID="n1", DATA_DIR="/var/data", INTERNAL_PORT="9100")
    env = worker_env(node, 2, {"KEEP": "me"})
    assert env["KEEP"] == "me"
    assert (env[WORKER_ENV], env["WORKERS"], env["NODE_ID"]) == ("2", "1", "n1-2")
    assert (env["DATA_DIR"], env["INTERNAL_PORT"]) == ("/var/data/worker-2", "9102")
    assert env["NODE_HOST"] == "n1"  # the assignor keeps replicas off the node's workers
    assert env["INTERNAL_URL"] == "http://127.0.0.1:9102"
    assert siblings(env) == {"0": "http://127.0.0.1:9100", "1": "http://127.0.0.1:9101"}
    assert siblings({"KEEP": "me"}) == {}  # a node of one process
    placed = settings(WORKERS="2", NODE_HOST="rack-7-host")
    assert worker_env(placed, 1, {})["NODE_HOST"] == "rack-7-host"


def test_workers_of_a_node_without_an_internal_token_share_one_of_their_own() -> None:
    alone = settings(WORKERS="2")
    assert worker_env(alone, 1, {}, "generated")["INTERNAL_TOKEN"] == "generated"
    shared = settings(WORKERS="2", INTERNAL_TOKEN="the-cluster-token-0123456789")
    environ = {"INTERNAL_TOKEN": "the-cluster-token-0123456789"}
    env = worker_env(shared, 1, environ, "generated")
    assert env["INTERNAL_TOKEN"] == "the-cluster-token-0123456789"


def test_the_workers_of_a_node_share_its_sqlite_read_model() -> None:
    node = settings(WORKERS="2", DATA_DIR="/var/data")
    assert worker_env(node, 1, {})["READ_MODEL_URL"] == "sqlite:////var/data/readmodel.db"
    postgres = settings(WORKERS="2", READ_MODEL_URL="postgresql+psycopg://rm@db/rm")
    environ = {"READ_MODEL_URL": "postgresql+psycopg://rm@db/rm"}
    assert worker_env(postgres, 1, environ)["READ_MODEL_URL"] == environ["READ_MODEL_URL"]
    assert "READ_MODEL_URL" not in worker_env(settings(WORKERS="2", READ_MODEL="off"), 1, {})


def test_an_internal_url_set_for_the_node_is_shifted_per_worker() -> None:
    node = settings(WORKERS="2", INTERNAL_URL="https://node-0.internal:9000")
    assert worker_env(node, 1, {})["INTERNAL_URL"] == "https://node-0.internal:9001"
    portless = settings(WORKERS="2", INTERNAL_URL="https://node-0.internal")
    with pytest.raises(SettingsError, match="names no port"):
        worker_env(portless, 1, {})


def test_the_metrics_of_a_nodes_workers_are_one_exposition_labelled_by_worker() -> None:
    text = (
        "# HELP backbone_events_applied_total applied\n"
        "# TYPE backbone_events_applied_total counter\n"
        "backbone_events_applied_total {n}\n"
        "# HELP backbone_consumer_lag lag\n"
        "# TYPE backbone_consumer_lag gauge\n"
        'backbone_consumer_lag{{partition="3"}} 2.0\n'
    )
    body = merged({"1": text.format(n=7.0), "0": text.format(n=5.0)}).decode()
    assert body.count("# TYPE backbone_events_applied_total counter") == 1
    assert 'backbone_events_applied_total{worker="0"} 5.0' in body
    assert 'backbone_events_applied_total{worker="1"} 7.0' in body
    assert 'backbone_consumer_lag{partition="3",worker="1"} 2.0' in body


def applied_by_worker(node: NodeProcess) -> dict[str, float]:
    """``backbone_events_applied_total`` per worker, from one scrape of the shared port."""
    answer = httpx.get(f"{node.url}/metrics", timeout=10).raise_for_status()
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "backbone_events_applied_total"
    }


def projectors(node: NodeProcess) -> set[str]:
    """The workers that run a read model projector, from one scrape of the shared port."""
    answer = httpx.get(f"{node.url}/metrics", timeout=10).raise_for_status()
    return {
        sample.labels["worker"]
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "backbone_read_model_alive"
    }


def read_model_lag(node: NodeProcess) -> int | None:
    """The node's read model lag, as ``/health/ready`` of the shared port reports it."""
    section = (node.status() or {}).get("read_model")
    return section.get("lag") if isinstance(section, dict) else None


def listed(node: NodeProcess) -> dict[str, int]:
    """Every customer's lifetime value, from one list request to the shared port."""
    answer = httpx.get(f"{node.url}/customers", params={"limit": 1000}, timeout=10)
    return {
        row["id"]: row["lifetime_value_cents"] for row in answer.raise_for_status().json()["items"]
    }


def workers_of(node: NodeProcess) -> dict[str, psutil.Process]:
    """The node's worker processes, by index."""
    assert node.proc is not None
    found = {}
    for child in psutil.Process(node.proc.pid).children():
        try:
            found[child.environ()[WORKER_ENV]] = child
        except psutil.NoSuchProcess:  # one just killed, not reaped yet
            continue
    return found


def statuses(node: NodeProcess) -> dict[str, dict[str, Any]]:
    """Every worker's status, by node id, from one ``/health/ready`` of the shared port:
    the worker that answers includes the others'."""
    status = node.status()
    if status is None:
        return {}
    others = status.get("workers", {}).values()
    return {str(s["node"]): s for s in [status, *others]}


def all_ready(node: NodeProcess) -> dict[str, dict[str, Any]] | None:
    seen = statuses(node)
    if len(seen) < 2 or not all(s.get("ready") for s in seen.values()):
        return None
    actives = sorted(p for s in seen.values() for p in s.get("active", []))
    return seen if actives == list(range(PARTITIONS)) else None


def not_ready(url: str) -> httpx.Response | None:
    got = answer(url)
    return got if got is not None and got.status_code == 503 else None


def answer(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=3)
    except httpx.TimeoutException:  # the connection went to a stopped worker
        return None


def aggregates_match(node: NodeProcess, reference: dict[str, tuple[int, int]]) -> bool:
    with httpx.Client(timeout=10) as client:
        for key, (total, count) in reference.items():
            answer = client.get(f"{node.url}/customers/{key}")
            if answer.status_code != 200:
                return False
            body = answer.json()
            if (body["lifetime_value_cents"], body["order_count"]) != (total, count):
                return False
    return True


def test_two_workers_split_the_partitions_survive_sigkill_and_die_with_the_node(
    bake: Any, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service("workers", bake(), kafka_brokers, tmp_path, PARTITIONS)
    del service.env["INTERNAL_TOKEN"]  # the workers make one of their own
    events, reference = make_stream(keys=60, orders=1_500, seed=5)
    first, second = events[:900], events[900:]
    asyncio.run(produce_over_time(kafka_brokers, service.topic, first, 300, 0))
    node = service.node(0, WORKERS="2", STANDBY_REPLICAS="0", READ_MODEL="on").start()
    try:
        seen = wait_until(lambda: all_ready(node), 90, "both workers ready, all partitions")
        assert sorted(seen) == ["node-0-0", "node-0-1"]
        assert all(s["active"] for s in seen.values()), "each worker holds partitions"
        # One read model for the node, beside the workers' directories, none in them.
        assert {"worker-0", "worker-1", "readmodel.db"} <= {p.name for p in node.data_dir.iterdir()}
        assert not list(node.data_dir.glob("worker-*/readmodel.db*"))
        workers = workers_of(node)
        assert sorted(workers) == ["0", "1"]
        # Any worker that takes the scrape answers for both; each event was applied once.
        wait_until(lambda: service.lag() == 0, 90, "the first events processed")
        for _ in range(5):
            counts = applied_by_worker(node)
            assert sorted(counts) == ["0", "1"], counts
            assert sum(counts.values()) == len(first), counts

        # A worker that does not answer makes the node not ready, and is not called dead:
        # the supervisor starts a dead one again.
        victim = workers["1"]
        victim.suspend()
        try:
            silent = wait_until(
                lambda: not_ready(f"{node.url}/health/ready"),
                60,
                "worker 0 to report worker 1 silent",
            )
            assert "worker 1 did not answer: it is starting" in silent.json()["reasons"]
            live = wait_until(lambda: answer(f"{node.url}/health/live"), 60, "a live answer")
            assert live.status_code == 200, live.text
        finally:
            victim.resume()

        # A worker killed once it has run long enough is started again, with its store.
        wait_until(
            lambda: time.time() - victim.create_time() > MIN_UPTIME_S + 1,
            MIN_UPTIME_S + 30,
            "the worker to be past its start",
        )
        victim.kill()
        wait_until(
            lambda: len(workers_of(node)) == 2 and victim not in workers_of(node).values(),
            30,
            "the worker started again",
        )
        asyncio.run(produce_over_time(kafka_brokers, service.topic, second, 300, 0))
        wait_until(lambda: service.lag() == 0, 90, "every event processed")
        wait_until(lambda: all_ready(node), 90, "both workers ready again")
        # Each key is answered through the shared port, whichever worker owns it.
        assert wait_until(lambda: aggregates_match(node, reference), 60, "the reference")
        # Worker 0 alone projects; every list, from whichever worker takes it, has every row.
        wait_until(lambda: read_model_lag(node) == 0, 90, "the read model caught up")
        assert projectors(node) == {"0"}
        for _ in range(6):
            assert listed(node) == {k: total for k, (total, _) in reference.items()}
        assert not list(node.data_dir.glob("worker-*/readmodel.db*"))

        # SIGKILL of the node takes its workers with it: no orphan holds the stores.
        workers = workers_of(node)
        node.kill()
        wait_until(lambda: not any(w.is_running() for w in workers.values()), 30, "their death")
    finally:
        node.stop()
    again = service.node(0, WORKERS="2", STANDBY_REPLICAS="0").start()
    try:
        wait_until(lambda: all_ready(again), 90, "the node back")
        # Its workers have new internal ports: until each has read the routing view with
        # them, a read forwarded between them meets the old one's endpoint (503, retry).
        assert wait_until(lambda: aggregates_match(again, reference), 60, "the reference")
    finally:
        again.stop()
    assert again.proc is not None and again.proc.returncode == 0


def test_a_worker_that_fails_at_its_start_stops_the_node_with_a_reason(
    bake: Any, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service("workers-bad", bake(), kafka_brokers, tmp_path, PARTITIONS)
    with socket.socket() as taken:  # no SO_REUSEPORT: the workers cannot bind the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess(
            "customer_backbone", "bad", tmp_path, {**service.env, "WORKERS": "2"}, port=port
        ).start()
        assert node.proc is not None
        code = node.proc.wait(timeout=60)
    assert code != 0
    log = node.log_path.read_text()
    assert "workers_stopping" in log and "exited" in log
    # The worker's own reason, in words: the setting, the port and what to do.
    assert f"error: HTTP_PORT={port} on 127.0.0.1 cannot be used: Address already in use" in log
    assert "give this node another HTTP_PORT" in log and "Traceback" not in log


def test_a_node_whose_port_is_taken_stops_at_once_in_words(bake: Any, tmp_path: Path) -> None:
    """Before it touches Kafka: the brokers here are never asked."""
    project = bake()
    env = {"PYTHONPATH": str(project / "src"), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess("customer_backbone", "twice", tmp_path, env)
        node.env["INTERNAL_PORT"] = str(port)
        node.start()
        assert node.proc is not None
        code = node.proc.wait(timeout=60)
    log = node.log_path.read_text()
    assert code == 2, log
    assert f"error: INTERNAL_PORT={port} on 127.0.0.1 cannot be used" in log, log
    assert "Traceback" not in log and "waiting_for_kafka" not in log, log
