"""Settings are declared once (backbone.settings): the docs' tables are that declaration,
and a bad value is refused with a message naming the variable and what it allows.

No Kafka: the settings are read from a dict, the tables from the files.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from backbone.settings import SETTINGS, EngineSettings, SettingsError, settings_table

from conftest import ENGINE_SRC, ROOT, TEMPLATE_PROJECT, Bake

ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = TEMPLATE_PROJECT / "README.md"
HEADER = "| variable | default | meaning |"
# The service README is a Jinja template: these defaults are the baker's answers.
README_SHOWN = {
    "SERVICE_NAME": "`{{ cookiecutter.project_slug }}`",
    "PARTITIONS": "`{{ cookiecutter.partitions }}`",
    "STANDBY_REPLICAS": "`{{ cookiecutter.standby_replicas }}`",
}
READ_MODEL_ONLY = {"READ_MODEL", "READ_MODEL_URL"}
REGENERATE = "regenerate it with `python -m backbone.settings` (see tests/test_settings.py)"


def table_in(text: str, after: str = "") -> str:
    """The Markdown table that starts with HEADER after ``after``; Jinja statement lines
    (``{% if %}`` around optional rows) are left out."""
    start = text.index(HEADER, text.index(after))
    rows = []
    for line in text[start:].splitlines():
        if line.startswith("{%"):
            continue
        if not line.startswith("|"):
            break
        rows.append(line)
    return "\n".join(rows) + "\n"


def variables(table: str) -> list[str]:
    return re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.MULTILINE)


def declared() -> list[str]:
    return [s.variable for s in SETTINGS if s.env]


def settings(**env: str) -> EngineSettings:
    return EngineSettings.from_env("svc", "customer", 3, 0, env)


# The tables


@pytest.mark.parametrize(
    ("path", "after", "shown"),
    [(ARCHITECTURE, "\n## Settings\n", {}), (README, "\n## Running a node\n", README_SHOWN)],
    ids=["architecture", "readme"],
)
def test_the_settings_tables_are_the_declaration(
    path: Path, after: str, shown: dict[str, str]
) -> None:
    table = table_in(path.read_text(), after)
    listed = variables(table)
    assert not set(listed) - set(declared()), f"{path.name} lists undeclared variables"
    assert not set(declared()) - set(listed), f"{path.name} misses declared variables"
    assert table == settings_table(shown), f"the table of {path.name} is stale: {REGENERATE}"


def test_the_read_model_rows_of_the_readme_are_there_only_with_a_read_model(
    bake: Bake,
) -> None:
    by_default = table_in((bake() / "README.md").read_text(), "\n## Running a node\n")
    assert variables(by_default) == declared()
    assert "| `PARTITIONS` | `12` (minimum 1) |" in by_default
    assert "| `SERVICE_NAME` | `customer-backbone` |" in by_default

    answers = {"include_read_model": "no", "partitions": "3", "standby_replicas": "0"}
    without = table_in((bake(**answers) / "README.md").read_text(), "\n## Running a node\n")
    assert variables(without) == [v for v in declared() if v not in READ_MODEL_ONLY]
    assert "| `PARTITIONS` | `3` (minimum 1) |" in without
    assert "| `STANDBY_REPLICAS` | `0` (minimum 0) |" in without


def test_python_m_backbone_settings_prints_the_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(ENGINE_SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "backbone.settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == settings_table()
    assert done.stderr == ""


def test_every_setting_is_declared_with_a_meaning_and_one_variable_of_its_own() -> None:
    assert [s.name for s in SETTINGS] == list(EngineSettings.__struct_fields__)
    assert all(s.meaning for s in SETTINGS)
    names = [v for s in SETTINGS for v in s.env]
    assert len(names) == len(set(names))
    assert [s.name for s in SETTINGS if not s.env] == ["store"]  # the domain's, not the node's


def test_fault_injection_is_not_a_setting() -> None:
    assert not [s.name for s in SETTINGS if "fault" in s.name]
    assert "FAULT" not in settings_table()


# Reading the environment


def test_defaults_come_from_the_service_and_the_declaration() -> None:
    s = settings()
    assert (s.service, s.store, s.partitions, s.standby_replicas) == ("svc", "customer", 3, 0)
    assert s.brokers == "127.0.0.1:9092"
    assert s.data_dir == Path("data")
    assert s.node_id == socket.gethostname()
    assert s.zone == "" and s.host == ""
    assert s.internal_url == "http://127.0.0.1:9000"
    assert s.read_model is True and s.read_model_url == ""
    assert (s.tracing, s.log_level) == ("none", "info")
    assert s.max_body_bytes == 64 * 1024
    assert s.changelog_retention_ms == 7 * 24 * 3600 * 1000


def test_variables_with_names_of_their_own() -> None:
    s = settings(
        SERVICE_NAME="other",
        KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092",
        OTEL_EXPORTER="OTLP",
        NODE_HOST="machine-1",
        KAFKA_CLIENT_RACK="rack-1",
        READ_MODEL="Off",
        PARTITIONS=" 24 ",
        DATA_DIR="/var/lib/svc",
        HTTP_HOST="10.0.0.5",
        INTERNAL_PORT="9100",
    )
    assert (s.service, s.brokers, s.tracing, s.host) == (
        "other",
        "k1:9092,k2:9092",
        "otlp",
        "machine-1",
    )
    assert s.zone == "rack-1"  # ZONE falls back to KAFKA_CLIENT_RACK
    assert s.read_model is False
    assert s.partitions == 24
    assert s.data_dir == Path("/var/lib/svc")
    assert s.internal_url == "http://10.0.0.5:9100"
    assert settings(ZONE="zone-a", KAFKA_CLIENT_RACK="rack-1").zone == "zone-a"


def test_tls_makes_the_derived_internal_url_https_and_an_explicit_url_wins() -> None:
    tls = {"INTERNAL_TLS_CERT": "c.pem", "INTERNAL_TLS_KEY": "k.pem", "INTERNAL_TLS_CA": "ca.pem"}
    s = settings(**tls)
    assert s.internal_url == "https://127.0.0.1:9000"
    assert (s.tls_cert, s.tls_key, s.tls_ca) == ("c.pem", "k.pem", "ca.pem")
    assert settings(INTERNAL_URL="https://n1.internal:9443").internal_url == (
        "https://n1.internal:9443"
    )


def test_an_empty_variable_counts_as_unset() -> None:
    s = settings(PARTITIONS="", SERVICE_NAME="", READ_MODEL="", INTERNAL_URL="", ZONE="")
    assert (s.partitions, s.service, s.read_model) == (3, "svc", True)
    assert s.internal_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PARTITIONS": "abc"}, "PARTITIONS='abc' is not an integer"),
        ({"MAX_BATCH_RECORDS": "1.5"}, "MAX_BATCH_RECORDS='1.5' is not an integer"),
        ({"PARTITIONS": "0"}, "PARTITIONS=0 is below the minimum of 1"),
        ({"SESSION_TIMEOUT_MS": "999"}, "SESSION_TIMEOUT_MS=999 is below the minimum of 1000"),
        ({"HTTP_PORT": "70000"}, "HTTP_PORT=70000 is above the maximum of 65535"),
        (
            {"INTERNAL_TLS_CERT": "c.pem", "INTERNAL_TLS_KEY": "k.pem"},
            "mutual TLS on the internal API needs INTERNAL_TLS_CERT, INTERNAL_TLS_KEY "
            "and INTERNAL_TLS_CA together",
        ),
        ({"OTEL_EXPORTER": "jaeger"}, "OTEL_EXPORTER='jaeger': use none, console or otlp"),
        ({"READ_MODEL": "maybe"}, "READ_MODEL='maybe': use on or off"),
        (
            {"LOG_LEVEL": "loud"},
            "LOG_LEVEL='loud': use debug, info, warning, warn, error or critical",
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_a_bad_value_is_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        settings(**env)
    assert str(refused.value) == message
    assert isinstance(refused.value, ValueError)


def test_secrets_are_not_in_repr() -> None:
    s = settings(INTERNAL_TOKEN="s3cret-token", READ_MODEL_URL="postgresql://u:pw-xyz@db/x")
    assert s.internal_token == "s3cret-token"
    assert s.read_model_url == "postgresql://u:pw-xyz@db/x"
    for shown in (repr(s), str(s), repr(s.__rich_repr__())):
        assert "s3cret-token" not in shown and "pw-xyz" not in shown
        assert "internal_token" not in shown and "read_model_url" not in shown
    assert "node_id=" in repr(s)


def test_settings_built_directly_keep_their_defaults() -> None:
    s = EngineSettings(service="s", store="customer", max_checkpoint_streams=3)
    assert (s.partitions, s.standby_replicas, s.max_checkpoint_streams) == (12, 1, 3)
    assert s.internal_url == ""  # derived by from_env only


# Fault injection: a test-only wrapper, outside production code


def test_the_fault_hooks_stall_before_sending_and_delay_after_the_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backbone.dev import faults
    from backbone.processing.processor import Processor, Staged

    for name in ("_send", "_acked", "_advance"):
        monkeypatch.setattr(Processor, name, getattr(Processor, name))  # undone after
    calls: list[str] = []

    async def send(self: Processor, staged: Staged) -> None:
        calls.append("sent")

    async def acked(self: Processor, inflight: Staged) -> list[None]:
        calls.append("acked")
        return [None]

    monkeypatch.setattr(Processor, "_send", send)
    monkeypatch.setattr(Processor, "_acked", acked)
    faults.install(stall_ms=50, delay_ms=50)
    assert Processor._send is not send and Processor._acked is not acked

    class Result:
        partition = 4

    staged = Staged(started=0.0, results=[Result()])  # type: ignore[list-item]
    loop = asyncio.new_event_loop()
    try:
        with structlog.testing.capture_logs() as logs:
            started = loop.time()
            loop.run_until_complete(Processor._send(object(), staged))  # type: ignore[arg-type]
            stalled = loop.time() - started
            started = loop.time()
            sent = loop.run_until_complete(Processor._acked(object(), staged))  # type: ignore[arg-type]
            delayed = loop.time() - started
    finally:
        loop.close()
    assert sent == [None] and calls == ["sent", "acked"]
    assert stalled >= 0.05 and delayed >= 0.05
    assert logs == [{"event": "fault_stall", "partitions": [4], "log_level": "warning"}]


@pytest.mark.parametrize("token", ["change-me", "CHANGEME", " change-me "])
def test_a_placeholder_internal_token_is_refused(token: str) -> None:
    with pytest.raises(SettingsError, match="INTERNAL_TOKEN is a placeholder"):
        EngineSettings.from_env("svc", "customer", 12, 1, {"INTERNAL_TOKEN": token})
