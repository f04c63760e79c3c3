"""Engine settings, read from the environment so that one image runs every node.

Every setting is declared once, as a field of ``EngineSettings``: its type, its default,
its meaning and its validation (``msgspec.Meta``), and the environment variable it comes
from (the field name upper-cased, unless ``env`` names others). ``from_env`` converts the
environment with msgspec; ``settings_table()`` (``python -m backbone.settings``) renders
the same declaration as the Markdown table of the docs.

An empty variable counts as unset. A bad value raises ``SettingsError`` naming the
variable and what it allows.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import msgspec

# Example values from docs and compose files: a node that starts with one would hand every
# customer's data to anyone who read the same example.
PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme"})


class SettingsError(ValueError):
    """A setting has a value the engine cannot use; the message names it and what is allowed."""


def _setting(
    meaning: str,
    *,
    env: str | tuple[str, ...] | None = None,
    shown: str | None = None,
    note: str | None = None,
    ge: int | None = None,
    le: int | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
) -> msgspec.Meta:
    """The declaration of one setting.

    ``env``: the variables it is read from, first set wins (default: the field name
    upper-cased; ``()``: not read from the environment). ``shown``: the default as the docs
    describe it, when it is not a constant. ``note``: said after the default. ``ge``/``le``:
    bounds of an integer. ``choices``: the values a string may take (case-insensitive).
    ``secret``: never in ``repr``.
    """
    extra: dict[str, Any] = {"secret": secret, "choices": choices}
    if env is not None:
        extra["env"] = (env,) if isinstance(env, str) else env
    if shown is not None:
        extra["shown"] = shown
    if note is not None:
        extra["note"] = note
    if choices:
        pattern = f"^({'|'.join(map(re.escape, choices))})$"
        return msgspec.Meta(pattern=pattern, description=meaning, extra=extra)
    return msgspec.Meta(ge=ge, le=le, description=meaning, extra=extra)


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True):
    service: Annotated[
        str,
        _setting(
            "prefix of the topic names and the consumer group id",
            env="SERVICE_NAME",
            shown="the service's name (its project slug)",
        ),
    ]
    store: Annotated[str, _setting("name of the aggregate's store (the domain's name)", env=())]
    brokers: Annotated[str, _setting("Kafka brokers", env="KAFKA_BOOTSTRAP_SERVERS")] = (
        "127.0.0.1:9092"
    )
    kafka_security_protocol: Annotated[
        str,
        _setting(
            "how clients reach the brokers: TLS (`ssl`), SASL credentials (`sasl_*`) or both",
            choices=("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
        ),
    ] = "plaintext"
    kafka_ssl_ca_file: Annotated[
        str,
        _setting(
            "CA (PEM) that signs the brokers' certificates, with `ssl` or `sasl_ssl`",
            shown="empty: the system's CAs",
        ),
    ] = ""
    kafka_ssl_cert_file: Annotated[
        str,
        _setting(
            "client certificate (PEM) for brokers that require one; with `KAFKA_SSL_KEY_FILE`"
        ),
    ] = ""
    kafka_ssl_key_file: Annotated[str, _setting("private key (PEM) of that certificate")] = ""
    kafka_sasl_mechanism: Annotated[
        str,
        _setting(
            "SASL mechanism, with `sasl_plaintext` or `sasl_ssl`",
            choices=("plain", "scram-sha-256", "scram-sha-512"),
        ),
    ] = "scram-sha-512"
    kafka_sasl_username: Annotated[
        str, _setting("SASL user, with `sasl_plaintext` or `sasl_ssl`")
    ] = ""
    kafka_sasl_password: Annotated[str, _setting("password of that SASL user", secret=True)] = ""
    partitions: Annotated[
        int,
        _setting(
            "partitions of the topics the node creates; must equal the count of existing topics",
            shown="the service's, set at bake time",
            ge=1,
        ),
    ] = 12
    replication_factor: Annotated[
        int,
        _setting(
            "replication factor of the topics the node creates; `min.insync.replicas` is 2 "
            "when it is 3 or more. `0`: 3, or the brokers in the cluster when they are fewer",
            ge=0,
        ),
    ] = 0
    standby_replicas: Annotated[
        int,
        _setting(
            "standby copies of each partition, on other nodes. The group leader's value is the "
            "one used",
            shown="the service's, set at bake time",
            ge=0,
        ),
    ] = 1
    data_dir: Annotated[
        Path,
        _setting(
            "RocksDB stores, checkpoints in transit, and the SQLite read model (if any)",
            note="relative to the working directory",
        ),
    ] = Path("data")
    node_id: Annotated[
        str,
        _setting(
            "must be stable and unique per node: static group membership id `<service>-<NODE_ID>`",
            shown="the host name",
        ),
    ] = msgspec.field(default_factory=socket.gethostname)
    host: Annotated[
        str,
        _setting(
            "the machine this node runs on, as the assignor sees it. Nodes with the same "
            "`NODE_HOST` never hold two replicas of one partition. Set it when several nodes "
            "share a machine",
            env="NODE_HOST",
            shown="empty: `NODE_ID`",
        ),
    ] = ""
    zone: Annotated[
        str,
        _setting(
            "the node's zone; the assignor spreads each partition's replicas over zones, "
            "bootstrap prefers peers in the same zone",
            env=("ZONE", "KAFKA_CLIENT_RACK"),
            shown="`KAFKA_CLIENT_RACK`, else empty",
        ),
    ] = ""
    http_host: Annotated[
        str,
        _setting(
            "address both HTTP servers bind to",
            note="`0.0.0.0` in the Docker image",
        ),
    ] = "127.0.0.1"
    http_port: Annotated[int, _setting("public HTTP port", ge=0, le=65535)] = 8000
    internal_port: Annotated[
        int,
        _setting(
            "port of the internal API (checkpoints, forwarded queries, `accept-loss`)",
            ge=0,
            le=65535,
        ),
    ] = 9000
    internal_url: Annotated[
        str,
        _setting(
            "how peers reach this node's internal API; it is sent to the group. Set it whenever "
            "`HTTP_HOST` is not an address peers can use (`0.0.0.0`, `127.0.0.1` across "
            "machines)",
            shown="`<scheme>://<HTTP_HOST>:<INTERNAL_PORT>`, scheme `https` when TLS is set",
        ),
    ] = ""
    internal_token: Annotated[
        str,
        _setting(
            "shared bearer token for checkpoints, forwarded queries and `accept-loss`, the same "
            "on every node. Empty: the node serves no checkpoints (403) and cannot fetch any; a "
            "partition it must copy waits, retrying, as long as a peer holds a copy",
            secret=True,
        ),
    ] = ""
    admin_token: Annotated[
        str,
        _setting(
            "bearer token of the public `/admin` routes (`Authorization: Bearer <ADMIN_TOKEN>`; "
            "wrong or missing: 401). Empty: those routes answer 403. `/health/*` and `/metrics` "
            "need none",
            secret=True,
        ),
    ] = ""
    tls_cert: Annotated[
        str,
        _setting(
            "certificate (PEM) of this node on the internal API. The three `INTERNAL_TLS_*` "
            "files together, or none: mutual TLS on the internal API, for serving and for "
            "requests to peers",
            env="INTERNAL_TLS_CERT",
        ),
    ] = ""
    tls_key: Annotated[
        str, _setting("private key (PEM) of that certificate", env="INTERNAL_TLS_KEY")
    ] = ""
    tls_ca: Annotated[
        str,
        _setting("CA (PEM) that signs the certificates of every node", env="INTERNAL_TLS_CA"),
    ] = ""
    session_timeout_ms: Annotated[
        int,
        _setting(
            "consumer group session timeout; heartbeat every twelfth of it. Bounds failover; the "
            "broker refuses values below its `group.min.session.timeout.ms` (6000 by default)",
            ge=1_000,
        ),
    ] = 6_000
    leave_group_on_stop: Annotated[
        bool,
        _setting(
            "a node stopped by SIGTERM removes its static membership from the group once its "
            "last batch is committed, so that its standbys take over at once. `off`: its "
            "partitions wait up to `SESSION_TIMEOUT_MS` for it to come back"
        ),
    ] = True
    peer_dead_after_ms: Annotated[
        int,
        _setting(
            "a peer whose internal API answers no health probe for this long (or refuses "
            "connections twice in a row), as every live node sees it, is removed from the "
            "group by the live node with the lowest internal URL. `0`: peers are left to "
            "the session timeout",
            ge=0,
        ),
    ] = 3_000
    peer_probe_interval_ms: Annotated[
        int, _setting("how often a node probes each peer's internal API for that", ge=50)
    ] = 250
    acceptable_lag: Annotated[
        int,
        _setting(
            "a member whose reported changelog offset for a partition is within this many "
            "records of the highest reported one counts as caught up",
            ge=0,
        ),
    ] = 10_000
    bootstrap_min_lag: Annotated[
        int,
        _setting(
            "a store more than this many records behind the changelog's end is bootstrapped "
            "from a peer instead of replayed",
            ge=0,
        ),
    ] = 100_000
    max_checkpoint_streams: Annotated[
        int, _setting("checkpoints this node streams to peers at once; more get 429", ge=1)
    ] = 2
    checkpoint_send_timeout_s: Annotated[
        int,
        _setting(
            "a peer that accepts no bytes of a checkpoint for this many seconds is cut off, and "
            "its stream slot freed",
            ge=1,
        ),
    ] = 30
    bootstrap_deadline_s: Annotated[
        int,
        _setting(
            "how long one cold bootstrap may take, every source, pause and transfer included; "
            "then the restore starts again if a member holds a copy. Not used by the "
            "`bootstrap` command (`--timeout`)",
            ge=1,
        ),
    ] = 1800
    bootstrap_min_bytes_per_s: Annotated[
        int,
        _setting(
            "a transfer that receives fewer than this times `BOOTSTRAP_STALL_S` bytes within any "
            "`BOOTSTRAP_STALL_S` window is abandoned for the next source. `0`: no minimum (a "
            "socket read still times out after 60 s)",
            ge=0,
        ),
    ] = 1_000_000
    bootstrap_stall_s: Annotated[int, _setting("the window of that check, in seconds", ge=1)] = 30
    repartition_retire_after_s: Annotated[
        int,
        _setting(
            "after a repartitioning, how long the previous generation's input topic is still "
            "read for late records before its topics and stores are deleted. `-1`: only by "
            "`repartition --retire`",
            ge=-1,
            note="1 day",
        ),
    ] = 86_400
    read_your_writes_timeout_ms: Annotated[
        int,
        _setting(
            "how long a GET that presents a write's `position` waits for the serving replica to "
            "apply it; then 504",
            ge=1,
        ),
    ] = 5_000
    batch_get_max_ids: Annotated[
        int, _setting("most ids one `POST /<plural>:batchGet` may ask for; more get 400", ge=1)
    ] = 1_000
    max_batch_records: Annotated[
        int, _setting("most input records fetched per batch, all partitions together", ge=1)
    ] = 100_000
    workers: Annotated[
        int,
        _setting(
            "processes of this node, one per core it may use: each is a member of the group "
            "with its own share of the partitions, store directory `DATA_DIR/worker-<i>`, "
            "`NODE_ID` `<NODE_ID>-<i>` and internal port `INTERNAL_PORT`+i; they share the "
            "public port, `NODE_HOST` and the read model, which worker 0 projects. One process "
            "runs one handler at a time",
            ge=1,
            le=64,
        ),
    ] = 1
    max_body_bytes: Annotated[int, _setting("largest HTTP body; larger gets 413", ge=256)] = (
        64 * 1024
    )
    # Finite by default: recovery copies a peer's checkpoint, so the changelog only needs
    # to cover the time a replica may be away.
    changelog_retention_ms: Annotated[
        int,
        _setting(
            "`retention.ms` of the changelog (`compact,delete`). `-1`, with "
            "`CHANGELOG_RETENTION_BYTES=-1`: `compact` only, infinite. Applied when the topic "
            "is created",
            note="7 days",
            ge=-1,
        ),
    ] = 7 * 24 * 3600 * 1000
    changelog_retention_bytes: Annotated[
        int,
        _setting(
            "`retention.bytes` of the changelog, per partition; `-1` no limit. Applied when "
            "the topic is created",
            ge=-1,
        ),
    ] = -1
    changelog_segment_ms: Annotated[
        int,
        _setting(
            "`segment.ms` of the changelog: retention deletes whole segments. Applied when the "
            "topic is created",
            note="1 day",
            ge=1_000,
        ),
    ] = 24 * 3600 * 1000
    read_model: Annotated[
        bool,
        _setting("`off`: this node runs no projector and has no list route (with a read model)"),
    ] = True
    read_model_url: Annotated[
        str,
        _setting(
            "SQLAlchemy URL of the read model, e.g. `postgresql+psycopg://user:pw@host/db`",
            shown="SQLite: `<DATA_DIR>/readmodel.db`",
            secret=True,  # may carry a password
        ),
    ] = ""
    tracing: Annotated[
        str,
        _setting(
            "exporter of traces and metrics (the OTLP exporter reads the `OTEL_*` variables)",
            env="OTEL_EXPORTER",
            choices=("none", "console", "otlp"),
        ),
    ] = "none"
    metrics: Annotated[
        bool,
        _setting("Prometheus metrics at `GET /metrics` on the public port; `off`: no such route"),
    ] = True
    log_level: Annotated[
        str,
        _setting(
            "level of the structlog logs (library logs: `warning` and up, all at `debug`)",
            choices=("debug", "info", "warning", "warn", "error", "critical"),
        ),
    ] = "info"

    @classmethod
    def from_env(
        cls,
        service: str,
        store: str,
        partitions: int,
        standby_replicas: int,
        env: Mapping[str, str] | None = None,
    ) -> EngineSettings:
        """The environment (``os.environ`` by default) over this service's defaults."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {
            "service": service,
            "store": store,
            "partitions": partitions,
            "standby_replicas": standby_replicas,
        }
        given: dict[str, tuple[str, str]] = {}  # field name -> (variable, raw value)
        for s in SETTINGS:
            found = next(((v, source[v]) for v in s.env if source.get(v, "") != ""), None)
            if found is not None:
                given[s.name] = found
                values[s.name] = s.normalise(*found)
        try:
            settings = msgspec.convert(values, cls, strict=False, dec_hook=_decode)
        except msgspec.ValidationError as exc:
            match = re.search(r"at `\$\.(\w+)`", str(exc))
            if match is None or match[1] not in given:
                raise SettingsError(str(exc)) from None
            raise _BY_NAME[match[1]].error(*given[match[1]], str(exc)) from None
        return settings._derived()

    def _derived(self) -> EngineSettings:
        """Checks across settings, and the defaults computed from others."""
        tls = (self.tls_cert, self.tls_key, self.tls_ca)
        if any(tls) and not all(tls):
            raise SettingsError(
                "mutual TLS on the internal API needs INTERNAL_TLS_CERT, INTERNAL_TLS_KEY "
                "and INTERNAL_TLS_CA together"
            )
        self._check_kafka_security()
        if self.internal_token.strip().lower() in PLACEHOLDER_TOKENS:
            raise SettingsError(
                "INTERNAL_TOKEN is a placeholder: every peer knows it. Set the same random "
                "secret on every node, for example the output of `openssl rand -hex 32`"
            )
        if self.admin_token.strip().lower() in PLACEHOLDER_TOKENS:
            raise SettingsError(
                "ADMIN_TOKEN is a placeholder: anyone who read the example knows it. Set a "
                "random secret, for example the output of `openssl rand -hex 32`"
            )
        if self.internal_url:
            return self
        scheme = "https" if all(tls) else "http"
        url = f"{scheme}://{self.http_host}:{self.internal_port}"
        return msgspec.structs.replace(self, internal_url=url)

    def _check_kafka_security(self) -> None:
        protocol = self.kafka_security_protocol
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise SettingsError(
                "a Kafka client certificate needs KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE "
                "together"
            )
        ssl_files = (self.kafka_ssl_ca_file, self.kafka_ssl_cert_file)
        if any(ssl_files) and protocol not in ("ssl", "sasl_ssl"):
            raise SettingsError(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL={protocol}: set it to "
                "ssl or sasl_ssl, or leave the files unset"
            )
        sasl = protocol.startswith("sasl_")
        credentials = (self.kafka_sasl_username, self.kafka_sasl_password)
        if sasl and not all(credentials):
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        if not sasl and any(credentials):
            raise SettingsError(
                f"KAFKA_SASL_USERNAME or KAFKA_SASL_PASSWORD is set but "
                f"KAFKA_SECURITY_PROTOCOL={protocol}: set it to sasl_ssl (or sasl_plaintext), "
                "or leave them unset"
            )

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"{type(self).__name__}({shown})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [(s.name, getattr(self, s.name)) for s in SETTINGS if not s.secret]


def _decode(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


@dataclass(frozen=True)
class Setting:
    """One field of ``EngineSettings`` as declared: what the docs and ``from_env`` read."""

    name: str
    kind: type  # int, str, bool or Path
    env: tuple[str, ...]  # the variables read, first set wins; () for none
    meaning: str
    default: Any  # None when computed (``shown`` says how)
    shown: str | None
    note: str | None
    ge: int | None
    le: int | None
    choices: tuple[str, ...]
    secret: bool

    @property
    def variable(self) -> str:
        return self.env[0]

    def normalise(self, variable: str, raw: str) -> Any:
        """The raw string as msgspec is to convert it (``strict=False``)."""
        if self.kind is bool:
            value = raw.strip().lower()
            if value not in ("on", "off"):
                raise self.error(variable, raw)
            return value == "on"
        if self.kind is int:
            return raw.strip()
        return raw.strip().lower() if self.choices else raw

    def error(self, variable: str, raw: str, detail: str = "") -> SettingsError:
        """What is wrong with ``raw``, in words that name the variable and what it allows."""
        if self.kind is bool:
            return SettingsError(f"{variable}={raw!r}: use on or off")
        if self.choices:
            return SettingsError(f"{variable}={raw!r}: use {_either(self.choices)}")
        if self.kind is int:
            try:
                value = int(raw)
            except ValueError:
                return SettingsError(f"{variable}={raw!r} is not an integer")
            if self.ge is not None and value < self.ge:
                return SettingsError(f"{variable}={value} is below the minimum of {self.ge}")
            if self.le is not None and value > self.le:
                return SettingsError(f"{variable}={value} is above the maximum of {self.le}")
            return SettingsError(f"{variable}={raw!r} is not an integer")
        return SettingsError(f"{variable}={raw!r}: {detail.split(' - at ')[0]}")

    def default_cell(self, shown: str | None = None) -> str:
        """The default column of the table; ``shown`` replaces the value itself."""
        if shown is None:
            shown = self.shown
        if shown is None:
            if self.kind is bool:
                shown = "`on`" if self.default else "`off`"
            elif self.default == "":
                shown = "empty"
            else:
                shown = f"`{self.default}`"
        notes = [self.note] if self.note else []
        if self.kind is bool:
            notes.append("`on` or `off`")
        if self.choices:
            notes.append(_either(tuple(f"`{c}`" for c in self.choices)))
        if self.ge is not None and self.le is not None:
            notes.append(f"{self.ge} to {self.le}")
        elif self.ge is not None:
            notes.append(f"minimum {self.ge}")
        return f"{shown} ({'; '.join(notes)})" if notes else shown


def _either(values: tuple[str, ...]) -> str:
    return f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]


def _declared() -> tuple[Setting, ...]:
    hints = get_type_hints(EngineSettings, include_extras=True)
    found = []
    for field in msgspec.structs.fields(EngineSettings):
        hint = hints[field.name]
        assert get_origin(hint) is Annotated, f"{field.name} has no declaration"
        kind, meta = get_args(hint)[:2]
        extra = meta.extra or {}
        env = extra.get("env", (field.name.upper(),))
        default = None if field.default is msgspec.NODEFAULT else field.default
        assert default is not None or "shown" in extra or not env, f"{field.name}: no default"
        found.append(
            Setting(
                name=field.name,
                kind=kind,
                env=env,
                meaning=meta.description or "",
                default=default,
                shown=extra.get("shown"),
                note=extra.get("note"),
                ge=meta.ge,
                le=meta.le,
                choices=extra["choices"],
                secret=extra["secret"],
            )
        )
    return tuple(found)


SETTINGS: tuple[Setting, ...] = _declared()
_BY_NAME = {s.name: s for s in SETTINGS}


def settings_table(shown: Mapping[str, str] | None = None) -> str:
    """The settings read from the environment as a Markdown table (variable, default,
    meaning), in declaration order. ``shown`` replaces the default of some variables (e.g.
    a template's placeholders)."""
    shown = shown or {}
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        if s.env:
            default = s.default_cell(shown.get(s.variable))
            rows.append(f"| `{s.variable}` | {default} | {s.meaning} |")
    return "\n".join(rows) + "\n"
