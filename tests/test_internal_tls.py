"""Mutual TLS on the internal API, switched on by configuration alone."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from clustertools import INTERNAL_TOKEN, new_service
from conftest import Bake

pytestmark = pytest.mark.kafka


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """A CA, and a certificate it signs for 127.0.0.1 (server) and for a client."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=directory,
    )
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("node", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=directory,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
            "-out",
            f"{name}.pem",
            cwd=directory,
        )


def test_internal_api_requires_a_client_certificate_when_tls_is_configured(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    service = new_service(
        "tls",
        bake(),
        kafka_brokers,
        tmp_path,
        1,
        INTERNAL_TLS_CERT=str(pki / "node.pem"),
        INTERNAL_TLS_KEY=str(pki / "node.key"),
        INTERNAL_TLS_CA=str(pki / "ca.pem"),
    )
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=90)
        url = f"https://127.0.0.1:{node.internal_port}/internal/partitions/0/checkpoint"
        headers = {"authorization": f"Bearer {INTERNAL_TOKEN}"}
        trusted = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(url, headers=headers, verify=trusted, timeout=10)
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served there
            httpx.get(url.replace("https", "http"), headers=headers, timeout=10)
        mutual = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        mutual.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        with httpx.stream("GET", url, headers=headers, verify=mutual, timeout=10) as response:
            assert response.status_code == 200
            assert b"MANIFEST.json" in next(response.iter_bytes())[:100]
    finally:
        node.stop()
