"""Shared fixtures of the template's tests.

The engine lives inside the template (``{{cookiecutter.project_slug}}/src/backbone``) and
imports nothing of the service, so it is importable straight from there, unrendered.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PROJECT = ROOT / "{{cookiecutter.project_slug}}"
ENGINE_SRC = TEMPLATE_PROJECT / "src"

if str(ENGINE_SRC) not in sys.path:
    sys.path.insert(0, str(ENGINE_SRC))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka for the whole session: $KAFKA_BOOTSTRAP_SERVERS, or one local broker."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    from backbone.localkafka import LocalKafka

    kafka = LocalKafka(workdir=tmp_path_factory.mktemp("kafka"), nodes=1)
    try:
        yield kafka.start()
    finally:
        kafka.stop()
