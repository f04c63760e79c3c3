"""What a node keeps across generations: the control log, the write gate, the previous
generation's stores while it switches, and the forwarder of late records."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from backbone.changelog.sources import ChangelogSource
from backbone.repartition.control import ControlLog, open_control_log
from backbone.repartition.derive import FIRST_CHANGELOG_OFFSET
from backbone.repartition.frozen import FrozenStores
from backbone.repartition.gate import Target, WriteGate
from backbone.repartition.late import LateForwarder
from backbone.repartition.plan import Generation, Plan
from backbone.repartition.status import describe
from backbone.settings import EngineSettings
from backbone.topics import Topics

# How long after a switch the old generation's stores answer the GETs the new parts
# cannot answer yet.
FROZEN_READS_S = 30.0


class NodeGenerations:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        initial = Topics(settings.service, settings.store)
        self.gate = WriteGate(Target(initial.events, settings.partitions))
        self.frozen: FrozenStores | None = None
        self.control: ControlLog | None = None
        self.late: LateForwarder | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self, producer: AIOKafkaProducer) -> Generation:
        """Read the control log; returns the generation in force."""
        s = self.settings
        self.control = await open_control_log(s, f"{s.service}-{s.node_id}", producer)
        return self.control.state.current

    async def stop(self) -> None:
        if self.late is not None:
            await self.late.stop()
        self.drop_frozen()

    def freeze(self, root: Any, partitions: int, drained: dict[int, int]) -> None:
        """Serve GETs from the stores of the generation being left, for a while."""
        self.drop_frozen()
        self.frozen = FrozenStores(root, partitions, drained)
        asyncio.get_running_loop().call_later(FROZEN_READS_S, self.drop_frozen)

    def drop_frozen(self) -> None:
        if self.frozen is not None:
            self.frozen.close()
            self.frozen = None

    def forward_late(
        self, previous: Plan | None, topics: Topics, current: Generation, producer: AIOKafkaProducer
    ) -> None:
        """Run the forwarder of late records while the previous generation's input exists."""
        if previous is None:
            if self.late is not None:
                self._stopping = asyncio.create_task(self.late.stop())
                self.late = None
            return
        if self.late is None or self.late.plan is not previous:
            self.late = LateForwarder(
                self.settings, topics.of(previous.source.number), previous, producer
            )
            self.late.start()
        self.late.target = Target(topics.events, current.partitions)

    def changelog_sources(self, topics: Topics, current: Generation) -> list[ChangelogSource]:
        """The changelogs a read model follows, oldest first (backbone.readmodel)."""
        previous = self.previous
        if previous is None:
            return [ChangelogSource(topics.changelog, current.partitions)]
        return [
            ChangelogSource(
                topics.of(previous.source.number).changelog, previous.source.partitions
            ),
            ChangelogSource(topics.changelog, current.partitions, FIRST_CHANGELOG_OFFSET),
        ]

    @property
    def previous(self) -> Plan | None:
        """The plan that made the current generation, until it is retired."""
        return None if self.control is None else self.control.state.previous

    def late_records(self) -> int:
        return 0 if self.late is None else self.late.forwarded

    def status(self, failure: str | None) -> dict[str, Any]:
        if self.control is None:
            raise RuntimeError("the engine has not started")
        late = None if self.late is None else self.late.forwarded
        status = describe(self.control.state, failure=failure, late=late)
        status["writes_paused"] = self.gate.paused_since is not None
        status["longest_write_pause_s"] = round(self.gate.longest_pause_s, 3)
        return status
