"""``GET /metrics``: the node's state in Prometheus' text format (ADR 0020).

One mechanism: a collector reads the engine's parts at scrape time, as the OpenTelemetry
observable callbacks of ``backbone.node.metrics`` do, so nothing is counted per event;
only the batch latency histogram is observed as batches go, once per applied batch,
through the processor's ``on_batch`` hook, and the write latency histogram once per write
acknowledged, through the write path's ``on_write`` hook. Each application has its own registry.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from litestar import Router, get
from litestar.response.base import ASGIResponse
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from backbone.http.siblings import ask, this_worker
from backbone.node import queries
from backbone.node.partition import State
from backbone.processing import processor as processing
from backbone.repartition.gate import WriteGate

if TYPE_CHECKING:
    from backbone.node.engine import Engine
    from backbone.processing.processor import Processor
    from backbone.readmodel import Projector

# From a few ms (a handful of records) to the 10 s of a large batch on a slow broker.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
# A write waits for one produce request in flight and then its own: a few ms on a healthy
# cluster, seconds while writes are paused for a repartitioning or a broker fails over.
WRITE_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, float("inf"))

_histograms: weakref.WeakKeyDictionary[Engine[Any], Histogram] = weakref.WeakKeyDictionary()
# Per engine, its registry: the internal API serves it to the node's other workers.
_registries: weakref.WeakKeyDictionary[Engine[Any], CollectorRegistry] = weakref.WeakKeyDictionary()
# Per engine's write gate, which outlives its generations as the engine does.
_write_histograms: weakref.WeakKeyDictionary[WriteGate, Histogram] = weakref.WeakKeyDictionary()


def _observe_batch(processor: Processor, seconds: float) -> None:
    """The processor's ``on_batch`` hook: the batch goes to its engine's histogram."""
    for engine, histogram in list(_histograms.items()):
        parts = engine.parts
        if parts is not None and parts.processor is processor:
            histogram.observe(seconds)
            return


def _observe_write(gate: WriteGate, seconds: float) -> None:
    """The write path's ``on_write`` hook: the write goes to its engine's histogram."""
    histogram = _write_histograms.get(gate)
    if histogram is not None:
        histogram.observe(seconds)


class EngineCollector(Collector):
    """The engine's gauges and counters, read from its parts at each scrape."""

    def __init__(self, engine: Engine[Any], projector: Projector[Any] | None) -> None:
        self.engine = engine
        self.projector = projector
        # Dead letters of earlier generations' processors, whose last count is kept here.
        self._processor: Processor | None = None
        self._dead_before = 0

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        parts = engine.parts
        applied = CounterMetricFamily(
            "backbone_events_applied", "input events applied to the aggregates' stores"
        )
        dead = CounterMetricFamily(
            "backbone_dead_letters", "input events sent to the dead-letter topic"
        )
        processor = None if parts is None else parts.processor
        if processor is not self._processor:
            if self._processor is not None:
                self._dead_before += self._processor.dead_letters
            self._processor = processor
        applied.add_metric([], engine.processed_before + (processor.processed if processor else 0))
        dead.add_metric([], self._dead_before + (processor.dead_letters if processor else 0))
        yield applied
        yield dead
        generation = GaugeMetricFamily("backbone_generation", "partitioning generation in force")
        generation.add_metric([], engine.generation.number)
        yield generation
        late = CounterMetricFamily(
            "backbone_repartition_late_records",
            "records sent to a previous generation's input and forwarded to this one",
        )
        late.add_metric([], engine.generations.late_records())
        yield late
        yield from self._partitions(engine)
        yield from self._read_model()

    def _partitions(self, engine: Engine[Any]) -> Iterator[Metric]:
        parts = engine.parts
        lag = GaugeMetricFamily(
            "backbone_consumer_lag",
            "input records of an assigned partition not yet applied (highwater - applied)",
            labels=["partition"],
        )
        standby = GaugeMetricFamily(
            "backbone_standby_lag",
            "changelog records a standby copy is behind",
            labels=["partition"],
        )
        restore_left = GaugeMetricFamily(
            "backbone_restore_remaining_records",
            "changelog records an active partition still has to restore",
            labels=["partition"],
        )
        restore_ratio = GaugeMetricFamily(
            "backbone_restore_progress_ratio",
            "share of its restore an active partition has done (0 to 1)",
            labels=["partition"],
        )
        received = GaugeMetricFamily(
            "backbone_bootstrap_received_bytes",
            "checkpoint bytes received from a peer by a partition bootstrapping",
            labels=["partition"],
        )
        total = GaugeMetricFamily(
            "backbone_bootstrap_total_bytes",
            "checkpoint size of a partition bootstrapping from a peer (0: not known yet)",
            labels=["partition"],
        )
        states = GaugeMetricFamily(
            "backbone_partitions", "partitions this node holds, by state", labels=["state"]
        )
        unmet = GaugeMetricFamily(
            "backbone_assignment_unmet_constraints",
            "assignment constraints the group leader could not meet",
        )
        if parts is not None:
            consumer = parts.clients.consumer
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                store = engine.stores.get(tp.partition)
                if highwater is not None and store is not None:
                    applied = store.meta().input_offset
                    lag.add_metric([str(tp.partition)], max(highwater - applied, 0))
            reader = parts.clients.reader
            for p, behind in sorted(reader.standby_lag().items()):
                if behind is not None:
                    standby.add_metric([str(p)], behind)
            for task in reader.progress():
                label, position, target = str(task["partition"]), task["position"], task["target"]
                if isinstance(target, int) and isinstance(position, int):
                    restore_left.add_metric([label], max(target - position, 0))
                    percent = task.get("percent")
                    if isinstance(percent, float | int):
                        restore_ratio.add_metric([label], percent / 100.0)
            for p, progress in sorted(parts.bootstrapper.progress.items()):
                received.add_metric([str(p)], progress.received)
                total.add_metric([str(p)], progress.total)
            held = parts.partitions
            for state in State:
                states.add_metric([state.value], len(held.in_state(state)))
            unmet.add_metric([], len(parts.assignor.unmet))
        yield from (lag, standby, restore_left, restore_ratio, received, total, states, unmet)

    def _read_model(self) -> Iterator[Metric]:
        projector = self.projector
        if projector is None:
            return
        lag = GaugeMetricFamily(
            "backbone_read_model_lag", "changelog records not yet in the SQL read model"
        )
        behind = projector.lag()
        if behind is not None:
            lag.add_metric([], behind)
        alive = GaugeMetricFamily(
            "backbone_read_model_alive", "1 while the read model projector runs, 0 once it died"
        )
        alive.add_metric([], 1 if projector.alive else 0)
        yield lag
        yield alive


def metrics_registry(engine: Engine[Any], projector: Projector[Any] | None) -> CollectorRegistry:
    """This node's registry: the collector, the batch histogram (fed by the processor) and
    the write histogram (fed by the write path)."""
    # No ``*_created`` series: the text format would show them as gauges of their own.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, projector))
    _histograms[engine] = Histogram(
        "backbone_batch_duration_seconds",
        "time to apply one batch and make it durable (changelog acks, store write, commit)",
        registry=registry,
        buckets=BATCH_BUCKETS,
    )
    if _observe_batch not in processing.on_batch:
        processing.on_batch.append(_observe_batch)
    _write_histograms[engine.gate] = Histogram(
        "backbone_write_duration_seconds",
        "time from a write's submission to its acknowledgement by Kafka (acks=all)",
        registry=registry,
        buckets=WRITE_BUCKETS,
    )
    if _observe_write not in queries.on_write:
        queries.on_write.append(_observe_write)
    _registries[engine] = registry
    return registry


def own_metrics(engine: Engine[Any]) -> bytes | None:
    """This process's metrics; None when the node serves none (``METRICS=off``)."""
    registry = _registries.get(engine)
    return None if registry is None else generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merged(texts: dict[str, str]) -> bytes:
    """Expositions of several workers as one, each sample labelled with its ``worker``."""
    families: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            into = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            into.samples.extend(
                sample._replace(labels={**sample.labels, "worker": worker})
                for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


def metrics_routes(engine: Engine[Any], projector: Projector[Any] | None) -> Router:
    """``GET /metrics`` in Prometheus' text exposition format (version 0.0.4)."""
    registry = metrics_registry(engine, projector)

    @get("/metrics", include_in_schema=False)
    async def scrape() -> ASGIResponse:
        body = generate_latest(registry)
        others = await ask(engine, "/internal/metrics")
        if others:  # a worker of several: the node's metrics are all of theirs
            texts = {i: text for i, text in others.items() if text is not None}
            body = merged({**texts, this_worker(): body.decode()})
        return ASGIResponse(body=body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return Router(path="/", route_handlers=[scrape])
