"""A node on a secured Kafka (SASL_SSL): it works with the right CA and credentials, and
refuses to start, saying why, with a wrong password or an unknown CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import structlog

from backbone.dev.cluster import NodeProcess, wait_until
from backbone.dev.localkafka import LocalKafka, make_pki
from backbone.dev.ports import free_port
from backbone.kafka_connection import (
    KafkaAccessError,
    KafkaConnection,
    _refusal,
    check_kafka,
    kafka_connection,
)
from backbone.settings import EngineSettings, SettingsError

from clustertools import Service, new_service
from conftest import Bake


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka-sasl-ssl"), sasl_ssl=True)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def service(bake: Bake, secured: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Service:
    """Its events topic is made over the PLAINTEXT listener; its nodes use SASL_SSL only."""
    listener = secured.sasl_ssl
    return new_service(
        "secured",
        bake(),
        secured.brokers,
        tmp_path_factory.mktemp("secured-nodes"),
        2,
        KAFKA_BOOTSTRAP_SERVERS=listener["brokers"],
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SSL_CA_FILE=listener["ca_file"],
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME=listener["username"],
        KAFKA_SASL_PASSWORD=listener["password"],
    )


def refused(node: NodeProcess) -> str:
    """The log of a node that must exit at start; it is read once the process is gone."""
    node.start()
    try:
        wait_until(lambda: not node.alive(), 60, "the node to exit")
    finally:
        node.stop()
    assert node.proc is not None and node.proc.returncode == 2, node.log_tail()
    log = node.log_path.read_text()
    assert "kafka_refused" in log and "Traceback" not in log, log
    return log


@pytest.mark.kafka
def test_a_node_serves_over_sasl_ssl_and_keeps_the_password_out_of_its_log(
    service: Service, secured: LocalKafka
) -> None:
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        body = msgspec.json.encode({"type": "customer_registered", "name": "S", "email": "s@x.io"})
        posted = httpx.post(f"{node.url}/customers/c-1/events", content=body, timeout=10)
        assert posted.status_code < 300, posted.text
        got = wait_until(
            lambda: (
                (r := httpx.get(f"{node.url}/customers/c-1", timeout=5)).status_code == 200 and r
            ),
            30,
            "the customer to be readable",
        )
        assert got.json()["name"] == "S"
    finally:
        node.stop()
    assert secured.sasl_ssl["password"] not in node.log_path.read_text()


@pytest.mark.kafka
def test_a_wrong_password_is_refused_in_words(service: Service) -> None:
    log = refused(service.node(1, KAFKA_SASL_PASSWORD="not-the-password"))
    assert "authentication of user 'backbone' with SCRAM-SHA-512 failed" in log
    assert "KAFKA_SASL_PASSWORD" in log and "not-the-password" not in log


@pytest.mark.kafka
def test_an_unknown_ca_is_refused_in_words(service: Service, tmp_path: Path) -> None:
    make_pki(tmp_path, "unused")  # another CA, which did not sign the brokers' certificate
    log = refused(service.node(2, KAFKA_SSL_CA_FILE=str(tmp_path / "ca.pem")))
    assert "signed by a CA this node does not trust" in log
    assert "Set KAFKA_SSL_CA_FILE" in log


def test_a_certificate_for_another_host_is_named_as_such() -> None:
    mismatch = ssl.SSLCertVerificationError("certificate verify failed")
    mismatch.verify_code = 64
    mismatch.verify_message = "IP address mismatch, certificate is not valid for '10.0.0.1'."
    reason = _refusal(KafkaConnection("10.0.0.1:9093"), "10.0.0.1:9093", mismatch)
    assert reason is not None and "its certificate does not name this host" in reason
    assert "KAFKA_BOOTSTRAP_SERVERS" in reason


def test_brokers_that_never_answer_stop_the_node_in_words() -> None:
    port = free_port()  # nothing listens there
    connection = KafkaConnection(f"127.0.0.1:{port}")
    with structlog.testing.capture_logs() as logs, pytest.raises(KafkaAccessError) as refusal:
        asyncio.run(check_kafka(connection, timeout_s=1.0, retry_s=0.1))
    said = str(refusal.value)
    assert said.startswith(f"no broker of KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port} answered in 1 s")
    assert "Start Kafka, or set KAFKA_BOOTSTRAP_SERVERS" in said
    events = [e["event"] for e in logs]
    assert events == ["waiting_for_kafka", "kafka_unreachable"], logs


def settings(**env: str) -> EngineSettings:
    return EngineSettings.from_env("svc", "customer", 3, 0, env)


def test_the_password_is_kept_out_of_repr() -> None:
    s = settings(
        KAFKA_SECURITY_PROTOCOL="sasl_plaintext",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD="pw-9f8e",
    )
    connection = kafka_connection(s)
    assert connection.kwargs()["sasl_plain_password"] == "pw-9f8e"
    assert connection.kwargs()["sasl_mechanism"] == "SCRAM-SHA-512"
    for shown in (repr(s), str(s), repr(connection)):
        assert "pw-9f8e" not in shown


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_USERNAME": "svc"},
            "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "pw"},
            "KAFKA_SASL_USERNAME or KAFKA_SASL_PASSWORD is set but "
            "KAFKA_SECURITY_PROTOCOL=plaintext: set it to sasl_ssl (or sasl_plaintext), or "
            "leave them unset",
        ),
        (
            {"KAFKA_SSL_CA_FILE": "/etc/ca.pem"},
            "KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL=plaintext: set it to ssl or "
            "sasl_ssl, or leave the files unset",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CERT_FILE": "/etc/me.pem"},
            "a Kafka client certificate needs KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE together",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "tls"},
            "KAFKA_SECURITY_PROTOCOL='tls': use plaintext, ssl, sasl_plaintext or sasl_ssl",
        ),
    ],
    ids=["no-password", "no-sasl", "no-ssl", "cert-alone", "unknown-protocol"],
)
def test_a_security_setting_that_cannot_work_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refusal:
        settings(**env)
    assert str(refusal.value) == message


def test_a_missing_ca_file_is_named() -> None:
    s = settings(KAFKA_SECURITY_PROTOCOL="ssl", KAFKA_SSL_CA_FILE="/nowhere/ca.pem")
    with pytest.raises(SettingsError, match=r"KAFKA_SSL_CA_FILE=/nowhere/ca\.pem"):
        kafka_connection(s)
