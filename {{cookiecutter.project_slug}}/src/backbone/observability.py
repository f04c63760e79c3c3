"""structlog JSON logs carrying trace ids, and OpenTelemetry tracing chosen by setting.

stderr carries one JSON object per line: our events, those of libraries (aiokafka, uvicorn),
and, with ``OTEL_EXPORTER=console``, one line per span and per metrics batch, with trace and
span ids in the same plain hex as the logs' ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_SECRET_KEYS = re.compile(r"token|secret|password|authorization|credential", re.IGNORECASE)


class _Lines:
    """stderr shared by structlog, stdlib logging and the console exporters: each line is
    written whole, under one lock, so lines of different threads never interleave."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            written = self.stream.write(text)
            self.stream.flush()
        return written

    def flush(self) -> None:
        with self.lock:
            self.stream.flush()


_out: _Lines | None = None


def _stderr() -> _Lines:
    global _out
    if _out is None or _out.stream is not sys.stderr:
        _out = _Lines(sys.stderr)
    return _out


def _add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if _SECRET_KEYS.search(key):
            event[key] = "***"
    return event


# -- Waiting for Kafka ---------------------------------------------------------------------
#
# While a fresh broker elects partition leaders and creates the group coordinator's topic,
# aiokafka logs every retry at WARNING or ERROR: dozens of lines for a node that is only
# waiting. Those known transient messages are folded into one ``waiting_for_kafka`` line
# per kind of wait; a wait that lasts longer than ``patience`` is an error, logged once per
# ``patience``. Anything else aiokafka says passes unchanged.

_WAITS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    (
        "coordinator",
        "the group coordinator",
        re.compile(
            r"GroupCoordinatorNotAvailable|NotCoordinatorForGroup|CoordinatorNotAvailable"
            r"|CoordinatorLoadInProgress|GroupLoadInProgress|Marking the coordinator dead"
            r"|Group Coordinator Request failed"
        ),
    ),
    (
        "leader",
        "partition leaders",
        re.compile(
            r"NotLeaderForPartition|NotLeaderOrFollower|LeaderNotAvailable"
            r"|not available during auto-create"
        ),
    ),
    (
        "topic",
        "topic metadata",
        re.compile(r"UnknownTopicOrPartition|not found in cluster metadata"),
    ),
    (
        "broker",
        "the Kafka brokers",
        re.compile(
            r"Unable connect to|Unable to request metadata|Unable to update metadata"
            r"|KafkaConnectionError|NodeNotReadyError"
        ),
    ),
)


_REBALANCING = re.compile(r"because it is rebalancing|RebalanceInProgress")


def _wait_kind(text: str) -> tuple[str, str] | None:
    for kind, what, pattern in _WAITS:
        if pattern.search(text):
            return kind, what
    return None


@dataclass
class _Wait:
    started: float
    last: float
    folded: int = 0
    reported: float = 0.0


@dataclass(frozen=True)
class Fold:
    """What to do with one transient message: drop it, or log it as ``event`` at ``level``."""

    event: str | None
    level: int = logging.WARNING
    fields: tuple[tuple[str, Any], ...] = ()


class KafkaWaits:
    """Per kind of wait: the first message of an episode is logged, the next ones are
    counted; an episode ends after ``quiet`` seconds without one of its messages."""

    def __init__(self, quiet: float = 30.0, patience: float = 120.0) -> None:
        self.quiet = quiet
        self.patience = patience
        self._lock = threading.Lock()
        self._waits: dict[str, _Wait] = {}

    def fold(self, text: str, now: float | None = None) -> Fold | None:
        """None: not a known transient message, log it as it is."""
        found = _wait_kind(text)
        if found is None:
            return None
        kind, what = found
        now = time.monotonic() if now is None else now
        with self._lock:
            wait = self._waits.get(kind)
            if wait is None or now - wait.last > self.quiet:
                self._waits[kind] = _Wait(started=now, last=now, reported=now)
                return Fold("waiting_for_kafka", logging.WARNING, (("waiting_for", what),))
            wait.last = now
            wait.folded += 1
            if now - wait.reported < self.patience:
                return Fold(None)
            wait.reported = now
            return Fold(
                "kafka_unavailable",
                logging.ERROR,
                (
                    ("waiting_for", what),
                    ("waited_s", round(now - wait.started, 1)),
                    ("retries", wait.folded),
                ),
            )


_waits = KafkaWaits()


class _FoldKafkaWaits(logging.Filter):
    """On the stderr handler: folds aiokafka's retry chatter (see :class:`KafkaWaits`)."""

    def __init__(self, waits: KafkaWaits) -> None:
        super().__init__()
        self.waits = waits

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        detail = record.getMessage()
        if _REBALANCING.search(detail):  # every member sees it while the group rebalances
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        folded = self.waits.fold(detail)
        if folded is None:
            return True
        if folded.event is None:
            return False
        record.msg, record.args, record.exc_info, record.exc_text = folded.event, (), None, None
        record.levelno, record.levelname = folded.level, logging.getLevelName(folded.level)
        record.backbone_fields = {**dict(folded.fields), "detail": detail}
        return True


def _record_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event.get("_record")
    fields = getattr(record, "backbone_fields", None)
    if fields:
        event.update(fields)
    return event


def _fold_own_waits(
    _: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Our own warnings about a transient Kafka error (e.g. a routing refresh that found no
    coordinator yet) fold into the same waits; errors are never folded."""
    if method not in ("warning", "warn") or "error" not in event:
        return event
    detail = f"{event.get('event')}: {event['error']}"
    folded = _waits.fold(detail)
    if folded is None:
        return event
    if folded.event is None:
        raise structlog.DropEvent
    event.pop("error")
    event["event"] = folded.event
    event["level"] = logging.getLevelName(folded.level).lower()
    event.update(dict(folded.fields), detail=detail)
    return event


def configure_logging(level: str = "info", json: bool = True) -> None:
    """Our logs and those of libraries (aiokafka, uvicorn) as one JSON stream on stderr."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        _redact,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    out = _stderr()
    structlog.configure(
        processors=[*shared, _fold_own_waits, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.addFilter(_FoldKafkaWaits(_waits))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, _record_fields],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library chatter (every rebalance step) only from WARNING up, unless asked for.
    root.setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))


# -- Refused requests ------------------------------------------------------------------------

_request_log = structlog.get_logger("backbone.http")


async def log_refusals(message: Any, scope: Any) -> None:
    """A Litestar ``before_send`` hook: logs each 4xx answer with its method, its path (never
    the query string nor any header, so no token) and status, at warning for 401 and 403 and
    info for the others; the trace id comes with it whenever the request is traced."""
    if message.get("type") != "http.response.start":
        return
    status = int(message.get("status", 0))
    if not 400 <= status < 500:
        return
    log = _request_log.warning if status in (401, 403) else _request_log.info
    log(
        "request_refused" if status in (401, 403) else "request_rejected",
        method=scope.get("method"),
        path=scope.get("path"),
        status=status,
    )


# -- Console exporters: one JSON object per line ---------------------------------------------


def _iso(nanos: int | None) -> str | None:
    if nanos is None:
        return None
    return datetime.fromtimestamp(nanos / 1e9, UTC).isoformat().replace("+00:00", "Z")


def _line(fields: dict[str, Any]) -> str:
    return json.dumps(fields, default=str, separators=(",", ":")) + "\n"


_URL_ATTRIBUTES = ("http.url", "http.target", "url.full")


def _safe_attributes(attributes: Any) -> dict[str, Any]:
    """A span's attributes without query strings (they may carry secrets) nor secret keys."""
    safe: dict[str, Any] = {}
    for key, value in dict(attributes or {}).items():
        if key == "url.query" or _SECRET_KEYS.search(key):
            continue
        if key in _URL_ATTRIBUTES and isinstance(value, str):
            value = value.split("?", 1)[0]
        safe[key] = value
    return safe


def span_line(span: ReadableSpan) -> str:
    """One span as one JSON line; ids in plain hex (32 and 16 characters) as in the logs."""
    ctx = span.get_span_context()
    fields: dict[str, Any] = {"event": "span", "level": "info", "timestamp": _iso(span.end_time)}
    fields["name"] = span.name
    if ctx is not None:
        fields["trace_id"] = format(ctx.trace_id, "032x")
        fields["span_id"] = format(ctx.span_id, "016x")
    if span.parent is not None:
        fields["parent_id"] = format(span.parent.span_id, "016x")
    fields["kind"] = span.kind.name
    fields["start"] = _iso(span.start_time)
    if span.start_time is not None and span.end_time is not None:
        fields["duration_ms"] = round((span.end_time - span.start_time) / 1e6, 3)
    fields["status"] = span.status.status_code.name
    if span.status.description:
        fields["status_description"] = span.status.description
    fields["attributes"] = _safe_attributes(span.attributes)
    if span.events:
        fields["events"] = [
            {"name": e.name, "timestamp": _iso(e.timestamp), "attributes": dict(e.attributes or {})}
            for e in span.events
        ]
    fields["service"] = span.resource.attributes.get("service.name")
    return _line(fields)


def metrics_line(data: MetricsData) -> str:
    """One export of metrics as one JSON line."""
    batch: Any = json.loads(data.to_json(indent=None))
    return _line(
        {
            "event": "metrics",
            "level": "info",
            "timestamp": _iso(time.time_ns()),
            "resource_metrics": batch.get("resource_metrics", batch),
        }
    )


_tracing = False  # set once by configure_tracing: OpenTelemetry's provider is set only once


def tracing_on() -> bool:
    """Whether traces are exported (``configure_tracing`` set the SDK's provider): hot paths
    skip even the no-op spans and the context propagation otherwise."""
    return _tracing


def configure_tracing(service: str, exporter: str, node_id: str) -> TracerProvider | None:
    """Traces and metrics to ``exporter``; ``none`` keeps OpenTelemetry's no-op providers,
    so unsampled hot paths cost nothing."""
    if exporter == "none":
        return None
    resource = Resource.create({"service.name": service, "service.instance.id": node_id})
    provider = TracerProvider(resource=resource)
    span_exporter: Any
    metric_exporter: Any
    if exporter == "console":
        out: Any = _stderr()
        span_exporter = ConsoleSpanExporter(out=out, formatter=span_line)
        metric_exporter = ConsoleMetricExporter(out=out, formatter=metrics_line)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
        metric_exporter = OTLPMetricExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    global _tracing
    _tracing = isinstance(trace.get_tracer_provider(), TracerProvider)
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=30_000)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return provider
