"""Topic names and their creation at start-up."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import InvalidPartitionsError, TopicAlreadyExistsError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of a service's topics. The input, the changelog and the consumer group belong
    to a generation (a partition count, see backbone.repartition); the first has no suffix."""

    service: str
    store: str
    generation: int = 0

    @property
    def _suffix(self) -> str:
        return "" if self.generation == 0 else f"-g{self.generation}"

    @property
    def events(self) -> str:
        return f"{self.service}.events{self._suffix}"

    @property
    def changelog(self) -> str:
        return f"{self.service}.{self.store}-changelog{self._suffix}"

    @property
    def dlq(self) -> str:
        return f"{self.service}.dlq"

    @property
    def dlq_replayed(self) -> str:
        """Compacted: the dead letters ``dlq replay`` re-submitted (``backbone.admin.replayed``)."""
        return f"{self.service}.dlq-replayed"

    @property
    def out(self) -> str:
        return f"{self.service}.out"

    @property
    def routing(self) -> str:
        """One partition, compacted, shared by every generation: the leader's routing view
        of each generation's group, keyed by the group's name (``backbone.assignment.view``)."""
        return f"{self.service}.routing"

    @property
    def group(self) -> str:
        return f"{self.service}{self._suffix}"

    @property
    def late_group(self) -> str:
        """The group that forwards late records of this generation's input to the next."""
        return f"{self.service}{self._suffix}-late"

    def of(self, generation: int) -> Topics:
        return Topics(self.service, self.store, generation)


# Compacted soon: a node that starts reads every record still in the log.
ROUTING_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(3_600_000),
    "min.cleanable.dirty.ratio": "0.1",
    "max.message.bytes": str(8 * 1024 * 1024),
}


async def durability(admin: AIOKafkaAdminClient, replication: int) -> tuple[int, dict[str, str]]:
    """The replication factor of a new topic (``replication``; 0: 3, or the live brokers when
    fewer) and its configuration: with 3 replicas, an acknowledged write (acks=all) is on
    2 brokers at least, so one broker's loss loses nothing and stops no writer."""
    if replication == 0:
        brokers = (await admin.describe_cluster())["brokers"]
        replication = max(1, min(3, len(brokers)))
    return replication, ({"min.insync.replicas": "2"} if replication >= 3 else {})


def changelog_config(retention_ms: int, retention_bytes: int, segment_ms: int) -> dict[str, str]:
    """Compacted, plus deletion of old segments unless both limits are -1 (infinite)."""
    if retention_ms < 0 and retention_bytes < 0:
        return {"cleanup.policy": "compact"}
    return {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(retention_ms),
        "retention.bytes": str(retention_bytes),
        "segment.ms": str(segment_ms),
    }


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    topics: Topics,
    partitions: int,
    replication: int,
    changelog_config: dict[str, str],
) -> None:
    """Create missing topics; refuse to run when an input or changelog has another
    partition count. The dead-letter topic grows to ``partitions`` (its records keep their
    input's partition); the output topic is keyed and left as it is; the routing topic has
    one partition."""
    wanted = {
        topics.events: (partitions, {}),
        topics.changelog: (partitions, changelog_config),
        topics.dlq: (partitions, {}),
        topics.out: (partitions, {}),
        topics.routing: (1, ROUTING_CONFIG),
    }
    existing = set(await admin.list_topics())
    names = [name for name in wanted if name not in existing]
    if names:
        factor, durable = await durability(admin, replication)
        missing = [
            NewTopic(name, wanted[name][0], factor, topic_configs={**durable, **wanted[name][1]})
            for name in names
        ]
        with contextlib.suppress(TopicAlreadyExistsError):  # another node was first
            await admin.create_topics(missing)
        log.info("topics_created", topics=names, partitions=partitions, replication=factor)
    described = await admin.describe_topics(list(wanted))
    for topic in described:
        count = len(topic.get("partitions", []))
        if topic["topic"] == topics.dlq and 0 < count < partitions:
            with contextlib.suppress(InvalidPartitionsError):  # another node grew it first
                await admin.create_partitions({topics.dlq: NewPartitions(partitions)})
        elif topic["topic"] in (topics.events, topics.changelog) and count and count != partitions:
            hint = (
                "set PARTITIONS to the topic's count"
                if topics.generation == 0
                else "the control log and the topics disagree: see the repartitioning runbook"
            )
            raise RuntimeError(
                f"topic {topic['topic']} has {count} partitions but generation "
                f"{topics.generation} has {partitions}: {hint}, or repartition the service "
                "with `repartition --partitions N`"
            )
