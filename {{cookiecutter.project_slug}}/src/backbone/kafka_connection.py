"""How every Kafka client of the engine connects to the brokers (address, TLS, SASL), and a
first contact that says in words why brokers refuse this node."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from backbone.settings import EngineSettings, SettingsError

log = structlog.get_logger(__name__)

# OpenSSL's verification codes (X509_V_ERR_*) that mean "signed by a CA we do not trust".
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21})
_NAME_MISMATCH = frozenset({62, 64})  # host name, IP address


class KafkaAccessError(RuntimeError):
    """The brokers refused this node: the message says why and which setting to change."""


@dataclass(frozen=True)
class KafkaConnection:
    """The connection part of every aiokafka client's arguments (``kwargs()``)."""

    brokers: str
    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def kwargs(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "bootstrap_servers": self.brokers,
            "security_protocol": self.security_protocol,
        }
        if self.ssl_context is not None:
            args["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            args["sasl_mechanism"] = self.sasl_mechanism
            args["sasl_plain_username"] = self.sasl_username
            args["sasl_plain_password"] = self.sasl_password
        return args


def kafka_connection(settings: EngineSettings) -> KafkaConnection:
    protocol = settings.kafka_security_protocol.upper()
    context = _ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if not protocol.startswith("SASL_"):
        return KafkaConnection(settings.brokers, protocol, context)
    return KafkaConnection(
        settings.brokers,
        protocol,
        context,
        settings.kafka_sasl_mechanism.upper(),
        settings.kafka_sasl_username,
        settings.kafka_sasl_password,
    )


def _ssl_context(settings: EngineSettings) -> ssl.SSLContext:
    ca, cert, key = (
        settings.kafka_ssl_ca_file,
        settings.kafka_ssl_cert_file,
        settings.kafka_ssl_key_file,
    )
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=ca or None, certfile=cert or None, keyfile=key or None
        )
    except (OSError, ssl.SSLError) as exc:
        variables = ("KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE")
        named = zip(variables, (ca, cert, key), strict=True)
        files = ", ".join(f"{name}={path}" for name, path in named if path)
        raise SettingsError(f"cannot load the Kafka TLS files ({files}): {exc}") from None
    return context


async def check_kafka(
    connection: KafkaConnection, timeout_s: float = 30.0, retry_s: float = 1.0
) -> None:
    """Open one connection to the first broker that answers, TLS and SASL included. Raises
    ``KafkaAccessError`` when a broker refuses this node's certificate check or credentials,
    or when none has answered for ``timeout_s`` (a node started a little before its brokers
    waits for them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting, last = False, ""
    while True:
        for address in connection.brokers.split(","):
            host, _, port = address.strip().rpartition(":")
            try:
                conn = await create_conn(
                    host.strip("[]"),
                    int(port),
                    request_timeout_ms=int(max(deadline - loop.time(), 1.0) * 1000),
                    ssl_context=connection.ssl_context,
                    security_protocol=connection.security_protocol,
                    sasl_mechanism=connection.sasl_mechanism,
                    sasl_plain_username=connection.sasl_username,
                    sasl_plain_password=connection.sasl_password,
                )
            except (TimeoutError, OSError, KafkaError) as exc:
                refusal = _refusal(connection, address.strip(), exc)
                if refusal is not None:
                    log.error("kafka_refused", broker=address.strip(), reason=refusal)
                    raise KafkaAccessError(refusal) from None
                last = f"{address.strip()}: {exc or type(exc).__name__}"
                continue
            conn.close()
            return
        if loop.time() >= deadline:
            reason = (
                f"no broker of KAFKA_BOOTSTRAP_SERVERS={connection.brokers} answered in "
                f"{timeout_s:.0f} s (last: {last}). Start Kafka, or set KAFKA_BOOTSTRAP_SERVERS "
                "to its brokers' host:port"
            )
            log.error("kafka_unreachable", reason=reason)
            raise KafkaAccessError(reason)
        if not waiting:
            log.warning("waiting_for_kafka", brokers=connection.brokers, last=last)
            waiting = True
        await asyncio.sleep(min(retry_s, max(deadline - loop.time(), 0.0)))


def _refusal(connection: KafkaConnection, address: str, exc: BaseException) -> str | None:
    """Why ``exc`` means the broker refuses this node, in words; None for a transient error."""
    verify = _cause(exc, ssl.SSLCertVerificationError)
    if isinstance(verify, ssl.SSLCertVerificationError):
        if verify.verify_code in _UNKNOWN_CA:
            return (
                f"broker {address}: its certificate is signed by a CA this node does not trust "
                f"({verify.verify_message}). Set KAFKA_SSL_CA_FILE to the CA (PEM) that signs "
                "the brokers' certificates"
            )
        if verify.verify_code in _NAME_MISMATCH:
            return (
                f"broker {address}: its certificate does not name this host "
                f"({verify.verify_message}). List the brokers in KAFKA_BOOTSTRAP_SERVERS by a "
                "name their certificates carry, or have the certificates issued for this name"
            )
        return f"broker {address}: its certificate is refused ({verify.verify_message})"
    if isinstance(_cause(exc, ssl.SSLError), ssl.SSLError):
        return (
            f"broker {address}: the TLS handshake failed ({exc}). Check that this listener "
            "speaks TLS (KAFKA_SECURITY_PROTOCOL ssl or sasl_ssl) and, if the broker asks for "
            "a client certificate, KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE"
        )
    if isinstance(exc, SaslAuthenticationFailed | IllegalSaslStateError):
        return (
            f"broker {address}: authentication of user {connection.sasl_username!r} with "
            f"{connection.sasl_mechanism} failed. Check KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD, and that the broker has this user for KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"broker {address}: {exc}. Set KAFKA_SASL_MECHANISM to one it enables"
    return None


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    return seen
