"""Shared fixtures of the template's tests.

The engine lives inside the template (``{{cookiecutter.project_slug}}/src/backbone``) and
imports nothing of the service, so it is importable straight from there, unrendered.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PROJECT = ROOT / "{{cookiecutter.project_slug}}"
ENGINE_SRC = TEMPLATE_PROJECT / "src"

Bake = Callable[..., Path]

if str(ENGINE_SRC) not in sys.path:
    sys.path.insert(0, str(ENGINE_SRC))


@pytest.fixture(scope="session")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka for the whole session: $KAFKA_BOOTSTRAP_SERVERS, or one local broker."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    from backbone.dev.localkafka import LocalKafka

    kafka = LocalKafka(workdir=tmp_path_factory.mktemp("kafka"), nodes=1)
    try:
        yield kafka.start()
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user config of our own: ignores ~/.cookiecutterrc and keeps replays out of $HOME."""
    home = tmp_path_factory.mktemp("cookiecutter-home")
    config = home / "config.yaml"
    config.write_text(
        f'cookiecutters_dir: "{home / "cookiecutters"}"\nreplay_dir: "{home / "replay"}"\n'
    )
    return config


@pytest.fixture(scope="session")
def bake(tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path) -> Bake:
    """bake(**answers) -> the generated project's directory, in a fresh output dir."""

    def _bake(**answers: str) -> Path:
        out = tmp_path_factory.mktemp("baked")
        project = cookiecutter(
            str(ROOT),
            no_input=True,
            extra_context=answers,
            output_dir=str(out),
            config_file=str(cookiecutter_config),
        )
        return Path(project)

    return _bake
