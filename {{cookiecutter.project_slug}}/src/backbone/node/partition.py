"""One partition this node holds, active or standby, and its whole lifecycle.

Each held partition is one :class:`Partition`: it owns the state machine below, and the
engine's other parts only report to it (a rebalance, a changelog gap, a newer writer
epoch, an operator's accept-loss). Readiness is read from its state.

Active::

    restoring --> claiming --> active
        |  ^          |  ^         |
        |  | copy     |  | caught  | a newer writer epoch
        v  | found    v  | up      '--> restoring
      incomplete    rebuilding

A partition whose every copy was lost is rebuilt from its input (at once when the events
topic still holds its whole history, else once an operator accepts the loss): it is
``rebuilding``, processing but not ready, until it has applied its input up to where it
had been before, and reports the rebuild from then on.

Standby::

    bootstrapping --> tailing --(changelog gap)--> bootstrapping
        |    ^
        v    | retry
      waiting

Any state goes to ``closed`` when the group takes the partition away or changes its role
here; ``failed`` needs an operator. Repartitioning will add splitting and retiring.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from backbone.changelog.reader import ChangelogMismatchError
from backbone.snapshot.bootstrap import NoSourceError
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry

log = structlog.get_logger(__name__)

RETRY_S = 2.0  # after a failed restore or standby check
WAITING_RETRY_S = 10.0  # a standby with a gap and no peer
INCOMPLETE_RETRY_S = 15.0  # an incomplete partition looks for a copy again
CLAIM_ATTEMPTS = 5


class Role(enum.Enum):
    ACTIVE = "active"
    STANDBY = "standby"


class State(enum.Enum):
    RESTORING = "restoring"
    INCOMPLETE = "incomplete"
    CLAIMING = "claiming"
    REBUILDING = "rebuilding"
    ACTIVE = "active"
    BOOTSTRAPPING = "bootstrapping"
    WAITING = "waiting"
    TAILING = "tailing"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Missing:
    """Changelog records a store needed that retention deleted: [since, begin)."""

    since: int
    begin: int


@dataclass(slots=True)
class Incomplete:
    """Every copy of an active partition is lost and its history is partly deleted: it is
    never served as ready until an operator accepts the loss."""

    partition: int
    changelog: Missing
    events_begin: int  # input offsets [0, events_begin) are deleted
    since: float = field(default_factory=time.time)
    accepted: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "missing_changelog_offsets": [self.changelog.since, self.changelog.begin],
            "missing_event_offsets": [0, self.events_begin],
            "since": round(self.since, 3),
            "accept_with": f"accept-loss --partition {self.partition}",
        }


@dataclass(slots=True)
class Rebuild:
    """An active rebuilt from its input after every copy of its state was lost."""

    partition: int
    from_offset: int  # the input offset the rebuild started at
    caught_up_at: int  # the input offset processed before the loss
    history_lost: bool  # the input no longer holds the whole history (a loss was accepted)
    since: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "from_offset": self.from_offset,
            "caught_up_at": self.caught_up_at,
            "history_lost": self.history_lost,
            "since": round(self.since, 3),
            "finished": None if self.finished is None else round(self.finished, 3),
        }


class Ports(Protocol):
    """What a partition needs of the rest of the node. Production wires Kafka clients
    behind it (``backbone.node.ports``); unit tests drive the lifecycle with fakes."""

    stores: StoreRegistry
    bootstrap_min_lag: int

    async def changelog_bounds(self, partition: int) -> tuple[int, int]: ...

    async def restore(self, store: PartitionStore, allow_gap: bool) -> set[bytes]:
        """Replay the changelog to its end; returns the keys of a zombie's records."""
        ...

    def tail(self, store: PartitionStore) -> None: ...

    def untail(self, partition: int) -> None: ...

    async def bootstrap(self, partition: int, path: Any, begin: int, end: int) -> None: ...

    async def claim(self, store: PartitionStore) -> bool: ...

    async def republish(self, store: PartitionStore, stale: set[bytes]) -> None: ...

    async def events_begin(self, partition: int) -> int: ...

    # False after a repartitioning: the input topic's history starts in the previous
    # generation, so a rebuild from it alone is never complete.
    history_in_input: bool

    async def committed(self, partition: int) -> int: ...

    async def commit(self, partition: int, offset: int) -> None: ...

    def activate(self, partition: int, position: int, quiet_until: int | None) -> None:
        """Process input from ``position``; outputs below ``quiet_until`` were sent."""
        ...

    def deactivate(self, partition: int) -> None: ...


class Partition:
    def __init__(self, number: int, role: Role, ports: Ports) -> None:
        self.number = number
        self.role = role
        self.ports = ports
        self.state = State.RESTORING if role is Role.ACTIVE else State.BOOTSTRAPPING
        self.incomplete: Incomplete | None = None
        self.rebuild: Rebuild | None = None
        self.failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Partition({self.number}, {self.role.value}, {self.state.value})"

    # --- inputs ---------------------------------------------------------------------
    def start(self) -> None:
        run = self._run_active if self.role is Role.ACTIVE else self._run_standby
        self._task = asyncio.create_task(run(), name=f"{self.role.value}-{self.number}")

    def close(self) -> None:
        """The group took the partition away or changed its role here."""
        if self._task is not None:
            self._task.cancel()
        if self.role is Role.ACTIVE:
            self.ports.deactivate(self.number)
        else:
            self.ports.untail(self.number)
        self.state = State.CLOSED

    def superseded(self) -> None:
        """A newer writer epoch took the changelog: take the partition over again."""
        if self.role is Role.ACTIVE and self.state in (State.ACTIVE, State.REBUILDING):
            self.ports.deactivate(self.number)
            self._transition(State.RESTORING)
            self.start()

    def changelog_gap(self) -> None:
        """Records the standby still needed were deleted: copy the partition again."""
        if self.role is Role.STANDBY and self.state is State.TAILING:
            self._transition(State.BOOTSTRAPPING)
            self.start()

    def caught_up(self) -> None:
        """The processor applied the rebuilt input up to where it had been before the loss."""
        if self.state is State.REBUILDING and self.rebuild is not None:
            self.rebuild.finished = time.time()
            self._transition(State.ACTIVE)
            log.warning("rebuild_caught_up", **self.rebuild.as_dict())

    def accept_loss(self) -> dict[str, Any]:
        if self.incomplete is None or self.state is not State.INCOMPLETE:
            raise LookupError(f"partition {self.number} is {self.state.value}, not incomplete")
        self.incomplete.accepted.set()
        return self.incomplete.as_dict()

    # --- what others read -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state is (State.ACTIVE if self.role is Role.ACTIVE else State.TAILING)

    @property
    def done(self) -> bool:
        """Its lifecycle task has ended (ready, failed or closed)."""
        return self._task is None or self._task.done()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the active role ------------------------------------------------------------
    async def _run_active(self) -> None:
        while True:
            try:
                self._transition(State.RESTORING)
                await self._take_over()
                return
            except asyncio.CancelledError:
                raise
            except ChangelogMismatchError as exc:
                # Needs an operator: retrying would fail the same way.
                self.failure = f"partition {self.number}: {exc}"
                self._transition(State.FAILED)
                log.error("restore_refused", partition=self.number, error=str(exc))
                return
            except Exception as exc:
                log.warning("restore_failed_retrying", partition=self.number, error=str(exc))
                await asyncio.sleep(RETRY_S)

    async def _take_over(self) -> None:
        store, missing = await self._ensure_state()
        rebuild = False
        if missing is not None:
            store, rebuild = await self._settle_loss(store, missing)
            self._transition(State.RESTORING)
        stale = await self.ports.restore(store, rebuild)
        self._transition(State.CLAIMING)
        for _ in range(CLAIM_ATTEMPTS):
            if await self.ports.claim(store):
                break
            stale |= await self.ports.restore(store, False)  # what landed meanwhile
        else:
            raise RuntimeError(f"partition {self.number}: other writers kept claiming it")
        # Records a zombie wrote are skipped by every reader; their keys get this node's
        # state written after them, the record compaction keeps.
        await self.ports.republish(store, stale)
        committed = await self.ports.committed(self.number)
        if rebuild:
            await self._start_rebuild(store, committed)
        meta = store.meta()
        # Also after a superseded batch, whose input this store never took.
        position = meta.input_offset if rebuild else max(meta.input_offset, committed)
        quiet = meta.outputs_sent if meta.outputs_sent > position else None
        if quiet is not None:  # a rebuild, just started or resumed after a restart
            begin = await self.ports.events_begin(self.number)
            lost = begin > 0 or not self.ports.history_in_input
            self.rebuild = Rebuild(self.number, position, quiet, lost)
        self.incomplete = None
        self._transition(State.ACTIVE if quiet is None else State.REBUILDING)
        self.ports.activate(self.number, position, quiet)

    async def _settle_loss(
        self, store: PartitionStore, missing: Missing
    ) -> tuple[PartitionStore, bool]:
        """No copy exists and the changelog has a gap before the store. If the events topic
        still starts at 0 and holds the whole history, rebuilding from it is complete.
        Otherwise wait, reported incomplete, until a copy turns up (False) or an operator
        accepts the loss (True)."""
        events_begin = await self.ports.events_begin(self.number)
        if events_begin == 0 and self.ports.history_in_input:
            return store, True
        entry = Incomplete(self.number, missing, events_begin)
        self.incomplete = entry
        self._transition(State.INCOMPLETE)
        while True:
            log.error("partition_incomplete", **entry.as_dict())
            try:
                await asyncio.wait_for(entry.accepted.wait(), INCOMPLETE_RETRY_S)
            except TimeoutError:
                try:
                    store, still = await self._ensure_state()
                except NoSourceError as exc:  # a copy turned up but could not be served yet
                    log.warning(
                        "incomplete_copy_unavailable", partition=self.number, error=str(exc)
                    )
                    continue
                if still is None:
                    log.info("partition_recovered_from_a_copy", partition=self.number)
                    return store, False
                continue
            log.warning("loss_accepted", **entry.as_dict())
            return store, True

    async def _start_rebuild(self, store: PartitionStore, committed: int) -> None:
        """Read the input again from its first offset. The fences of the aggregates the
        store and changelog still hold keep this exactly-once; outputs and dead letters
        below what was processed before are not sent again. Recorded in the store and the
        group before the first event, so that a crash continues the rebuild."""
        begin = await self.ports.events_begin(self.number)
        sent = max(committed, store.meta().input_offset)
        store.write((), input_offset=begin, outputs_sent=sent)
        await self.ports.commit(self.number, begin)
        log.error(
            "rebuilding_from_input",
            partition=self.number,
            from_offset=begin,
            outputs_already_sent_below=sent,
        )

    # --- the standby role -----------------------------------------------------------
    async def _run_standby(self) -> None:
        while True:
            self._transition(State.BOOTSTRAPPING)
            try:
                store, missing = await self._ensure_state()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("standby_failed_retrying", partition=self.number, error=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            if missing is None:
                self.ports.tail(store)
                self._transition(State.TAILING)
                return
            self._transition(State.WAITING)
            log.error("standby_waiting_for_a_peer", partition=self.number)
            await asyncio.sleep(WAITING_RETRY_S)

    # --- both roles -----------------------------------------------------------------
    async def _ensure_state(self) -> tuple[PartitionStore, Missing | None]:
        """Open the store, bootstrapping it from a peer when it is missing, behind the
        changelog's start, or far behind. Returns it and, when no copy exists in the group
        and the changelog no longer reaches back to the store, what is missing.

        Raises NoSourceError while a member still holds a copy that no source could serve
        yet: the caller retries; it never rebuilds past an existing copy."""
        stores, p = self.ports.stores, self.number
        store = stores.open(p)
        begin, end = await self.ports.changelog_bounds(p)
        offset = store.meta().changelog_offset
        log.info("store_checked", partition=p, offset=offset, begin=begin, end=end)
        if offset < begin:
            reason = f"store at changelog offset {offset} is older than its first offset {begin}"
        elif end - offset > self.ports.bootstrap_min_lag:
            reason = f"store is {end - offset} changelog records behind"
        else:
            return store, None
        log.warning("bootstrap_needed", partition=p, reason=reason)
        path = stores.path(p)
        stores.close(p)
        try:
            await self.ports.bootstrap(p, path, begin, end)
        except NoSourceError as exc:
            if exc.copy_exists:
                stores.open(p)
                raise
            gap = offset < begin  # far behind without a gap: the changelog completes it
            log.error(
                "bootstrap_unavailable",
                partition=p,
                error=str(exc),
                fallback="rebuild from the events topic" if gap else "changelog replay",
            )
            # A store with a gap is kept: with the input, its fences still count.
            return stores.open(p), Missing(offset, begin) if gap else None
        return stores.open(p), None

    def _transition(self, state: State) -> None:
        if state is not self.state:
            log.debug(
                "partition_state", partition=self.number, was=self.state.value, now=state.value
            )
        self.state = state
