"""Shared fixtures: a real Kafka (from KAFKA_BOOTSTRAP_SERVERS or started here) and nodes."""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backbone.dev.cluster import NodeProcess
from backbone.dev.localkafka import LocalKafka


@pytest.fixture(scope="session")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    with LocalKafka(tmp_path_factory.mktemp("kafka"), nodes=1) as kafka:
        yield kafka.brokers


NodeFactory = Callable[..., NodeProcess]


@pytest.fixture
def service_name() -> str:
    """A fresh service name per test, so topics and consumer groups never collide."""
    return f"{{ cookiecutter.project_slug }}-t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def node_factory(kafka_brokers: str, service_name: str, tmp_path: Path) -> Iterator[NodeFactory]:
    nodes: list[NodeProcess] = []

    def make(name: str = "n1", **env: str) -> NodeProcess:
        node = NodeProcess(
            "{{ cookiecutter.package_name }}",
            name,
            tmp_path,
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_brokers,
                "SERVICE_NAME": service_name,
                # the service's own partition count, at most 4 to keep the tests quick
                "PARTITIONS": "{{ [cookiecutter.partitions | int, 4] | min }}",
                "INTERNAL_TOKEN": "test-internal-token",
                **env,
            },
        )
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.kill()
