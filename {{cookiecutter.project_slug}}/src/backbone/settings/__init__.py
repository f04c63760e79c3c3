"""Engine settings, read from the environment so that one image runs every node."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """A setting has a value the engine cannot use; the message names it and what is allowed."""


def _int(env: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum of {minimum}")
    return value


def _on_off(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").lower()
    if raw == "":
        return default
    if raw not in ("on", "off"):
        raise SettingsError(f"{name}={raw!r}: use on or off")
    return raw == "on"


@dataclass(frozen=True)
class EngineSettings:
    service: str
    store: str
    brokers: str = "127.0.0.1:9092"
    partitions: int = 12
    replication_factor: int = 1
    standby_replicas: int = 1
    data_dir: Path = Path("data")
    node_id: str = field(default_factory=socket.gethostname)
    zone: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_batch_records: int = 100_000
    max_body_bytes: int = 64 * 1024
    # Finite by default: recovery copies a peer's checkpoint, so the changelog only needs
    # to cover the time a replica may be away (see docs/decisions).
    changelog_retention_ms: int = 7 * 24 * 3600 * 1000
    changelog_retention_bytes: int = -1
    changelog_segment_ms: int = 24 * 3600 * 1000
    tracing: str = "none"
    log_level: str = "info"
    fault_delay_ms: int = 0
    fault_stall_ms: int = 0
    host: str = ""
    session_timeout_ms: int = 6_000
    acceptable_lag: int = 10_000
    internal_port: int = 9000
    internal_url: str = ""
    internal_token: str = field(default="", repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    bootstrap_min_lag: int = 100_000
    max_checkpoint_streams: int = 2
    bootstrap_deadline_s: int = 1800
    bootstrap_min_bytes_per_s: int = 1_000_000
    bootstrap_stall_s: int = 30
    checkpoint_send_timeout_s: int = 30
    read_model: bool = True
    read_model_url: str = field(default="", repr=False)  # may carry a password

    @classmethod
    def from_env(
        cls,
        service: str,
        store: str,
        partitions: int,
        standby_replicas: int,
        env: Mapping[str, str] | None = None,
    ) -> EngineSettings:
        e = dict(os.environ if env is None else env)
        tracing = e.get("OTEL_EXPORTER", "none").lower()
        if tracing not in ("none", "console", "otlp"):
            raise SettingsError(f"OTEL_EXPORTER={tracing!r}: use none, console or otlp")
        host = e.get("HTTP_HOST", "127.0.0.1")
        port = _int(e, "HTTP_PORT", 8000, 0)
        internal_port = _int(e, "INTERNAL_PORT", 9000, 0)
        tls = [e.get(k, "") for k in ("INTERNAL_TLS_CERT", "INTERNAL_TLS_KEY", "INTERNAL_TLS_CA")]
        if any(tls) and not all(tls):
            raise SettingsError(
                "mutual TLS on the internal API needs INTERNAL_TLS_CERT, INTERNAL_TLS_KEY "
                "and INTERNAL_TLS_CA together"
            )
        scheme = "https" if all(tls) else "http"
        return cls(
            service=e.get("SERVICE_NAME", service),
            store=store,
            brokers=e.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            partitions=_int(e, "PARTITIONS", partitions, 1),
            replication_factor=_int(e, "REPLICATION_FACTOR", 1, 1),
            standby_replicas=_int(e, "STANDBY_REPLICAS", standby_replicas, 0),
            data_dir=Path(e.get("DATA_DIR", "data")),
            node_id=e.get("NODE_ID", socket.gethostname()),
            zone=e.get("ZONE", e.get("KAFKA_CLIENT_RACK", "")),
            http_host=host,
            http_port=port,
            max_batch_records=_int(e, "MAX_BATCH_RECORDS", 100_000, 1),
            max_body_bytes=_int(e, "MAX_BODY_BYTES", 64 * 1024, 256),
            changelog_retention_ms=_int(e, "CHANGELOG_RETENTION_MS", 7 * 24 * 3600 * 1000, -1),
            changelog_retention_bytes=_int(e, "CHANGELOG_RETENTION_BYTES", -1, -1),
            changelog_segment_ms=_int(e, "CHANGELOG_SEGMENT_MS", 24 * 3600 * 1000, 1_000),
            tracing=tracing,
            log_level=e.get("LOG_LEVEL", "info").lower(),
            fault_delay_ms=_int(e, "BACKBONE_FAULT_DELAY_MS", 0, 0),
            fault_stall_ms=_int(e, "BACKBONE_FAULT_STALL_MS", 0, 0),
            host=e.get("NODE_HOST", ""),
            session_timeout_ms=_int(e, "SESSION_TIMEOUT_MS", 6_000, 1_000),
            acceptable_lag=_int(e, "ACCEPTABLE_LAG", 10_000, 0),
            internal_port=internal_port,
            internal_url=e.get("INTERNAL_URL", f"{scheme}://{host}:{internal_port}"),
            internal_token=e.get("INTERNAL_TOKEN", ""),
            tls_cert=e.get("INTERNAL_TLS_CERT", ""),
            tls_key=e.get("INTERNAL_TLS_KEY", ""),
            tls_ca=e.get("INTERNAL_TLS_CA", ""),
            bootstrap_min_lag=_int(e, "BOOTSTRAP_MIN_LAG", 100_000, 0),
            max_checkpoint_streams=_int(e, "MAX_CHECKPOINT_STREAMS", 2, 1),
            bootstrap_deadline_s=_int(e, "BOOTSTRAP_DEADLINE_S", 1800, 1),
            bootstrap_min_bytes_per_s=_int(e, "BOOTSTRAP_MIN_BYTES_PER_S", 1_000_000, 0),
            bootstrap_stall_s=_int(e, "BOOTSTRAP_STALL_S", 30, 1),
            checkpoint_send_timeout_s=_int(e, "CHECKPOINT_SEND_TIMEOUT_S", 30, 1),
            read_model=_on_off(e, "READ_MODEL", True),
            read_model_url=e.get("READ_MODEL_URL", ""),
        )
