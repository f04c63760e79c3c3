"""Topic names and their creation at start-up."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    service: str
    store: str
    generation: int = 0

    @property
    def events(self) -> str:
        return f"{self.service}.events"

    @property
    def changelog(self) -> str:
        suffix = "" if self.generation == 0 else f"-g{self.generation}"
        return f"{self.service}.{self.store}-changelog{suffix}"

    @property
    def dlq(self) -> str:
        return f"{self.service}.dlq"

    @property
    def out(self) -> str:
        return f"{self.service}.out"

    @property
    def group(self) -> str:
        return self.service


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
    """Create missing topics; refuse to run when an existing one has another partition count."""
    wanted = {
        topics.events: {},
        topics.changelog: changelog_config,
        topics.dlq: {},
        topics.out: {},
    }
    existing = set(await admin.list_topics())
    missing = [
        NewTopic(name, partitions, replication, topic_configs=config)
        for name, config in wanted.items()
        if name not in existing
    ]
    if missing:
        with contextlib.suppress(TopicAlreadyExistsError):  # another node was first
            await admin.create_topics(missing)
        log.info("topics_created", topics=[t.name for t in missing], partitions=partitions)
    described = await admin.describe_topics(list(wanted))
    for topic in described:
        count = len(topic.get("partitions", []))
        if count and count != partitions:
            raise RuntimeError(
                f"topic {topic['topic']} has {count} partitions but PARTITIONS={partitions}: "
                "set PARTITIONS to the topic's count, or repartition the service"
            )
