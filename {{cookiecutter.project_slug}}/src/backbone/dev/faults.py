"""Fault injection for the kill tests, kept out of production code.

``python -m backbone.dev.faults <service package> <cli args...>`` runs the service's
command line (``<package>.cli.main``) with the processor's sending of a batch
(``Processor._send``) and its wait for the acks (``Processor._acked``) wrapped:

- ``FAULT_STALL_MS``: a pause before the batch's records are sent, after the
  membership check, logged as ``fault_stall``: a window in which a test freezes the node
  (SIGSTOP) to make a zombie writer.
- ``FAULT_DELAY_MS``: a pause after Kafka acked them and before the store write: a wider
  window for a SIGKILL to land between the changelog and the store.
- ``FAULT_KILL_IN_FLIGHT``: N; the node SIGKILLs itself the N-th time it holds two
  batches: one acknowledged by Kafka but not written to the store, and the next applied
  over it in memory. Logged as ``fault_kill`` first.
- ``FAULT_KILL_AT``: the name of a point (``backbone.repartition.faults.POINTS``: a
  repartitioning step, or a ``dlq replay`` batch sent) at which the process SIGKILLs
  itself, logged as ``fault_kill`` first; ``<point>@<n>``: the n-th time it is reached.
- ``FAULT_CANCEL_ON_SIGUSR1``: names of asyncio tasks (comma-separated: ``processor``,
  ``changelog-reader``, ``routing``, ``read-model``) that a ``run`` node cancels when it
  receives SIGUSR1, logged as ``fault_cancel``: a part that dies while the node lives.

The pauses default to 0 (none), the kill and the cancel to none.
``backbone.dev.cluster.NodeProcess(..., faults=...)`` starts a node this way.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from backbone.changelog.writer import Sent
from backbone.http import serve as serving
from backbone.processing.processor import Processor, Staged
from backbone.repartition import faults
from backbone.settings import EngineSettings

log = structlog.get_logger(__name__)

VARIABLES = (
    "FAULT_STALL_MS",
    "FAULT_DELAY_MS",
    "FAULT_KILL_AT",
    "FAULT_KILL_IN_FLIGHT",
    "FAULT_CANCEL_ON_SIGUSR1",
)


def _ms(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not an integer") from None
    if value < 0:
        raise SystemExit(f"error: {name}={value} is below the minimum of 0")
    return value


def install(stall_ms: int = 0, delay_ms: int = 0, kill_in_flight: int = 0) -> None:
    """Wrap ``Processor._send`` and ``Processor._acked`` with the faults (in this process,
    for every node)."""
    send, acked, advance = Processor._send, Processor._acked, Processor._advance

    async def _send(self: Processor, staged: Staged) -> None:
        if stall_ms:
            log.warning("fault_stall", partitions=sorted(r.partition for r in staged.results))
            await asyncio.sleep(stall_ms / 1000)
        await send(self, staged)

    async def _acked(self: Processor, inflight: Staged) -> list[Sent | None]:
        sent = await acked(self, inflight)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return sent

    seen = 0

    async def _advance(self: Processor, staged: Staged | None) -> None:
        nonlocal seen
        inflight = self._inflight
        if kill_in_flight and inflight is not None and staged is not None and staged.results:
            seen += 1
            if seen == kill_in_flight:
                await acked(self, inflight)
                log.warning(
                    "fault_kill",
                    point="two_batches_in_flight",
                    acknowledged={r.partition: r.next_offset for r in inflight.results},
                    applied={r.partition: r.next_offset for r in staged.results},
                )
                os.kill(os.getpid(), signal.SIGKILL)
        await advance(self, staged)

    Processor._send = _send  # type: ignore[method-assign]
    Processor._acked = _acked  # type: ignore[method-assign]
    Processor._advance = _advance  # type: ignore[method-assign]


def kill_at(where: str) -> None:
    """SIGKILL this process the n-th time it reaches a point (``<point>[@<n>]``)."""
    point, _, nth = where.partition("@")
    if point not in faults.POINTS:
        raise SystemExit(f"error: FAULT_KILL_AT={point!r} is not one of {', '.join(faults.POINTS)}")
    if nth and not nth.isdigit():
        raise SystemExit(f"error: FAULT_KILL_AT={where!r}: the count after '@' is not a number")
    left = int(nth or "1")

    def hook(name: str) -> None:
        nonlocal left
        if name == point:
            left -= 1
            if left <= 0:
                log.warning("fault_kill", point=name)
                os.kill(os.getpid(), signal.SIGKILL)

    faults.hook = hook


def cancel_on_signal(names: str) -> None:
    """Make ``serve`` cancel the tasks named in ``names`` on SIGUSR1."""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    serve = serving.serve

    def cancel() -> None:
        for task in asyncio.all_tasks():
            if task.get_name() in wanted:
                log.warning("fault_cancel", task=task.get_name())
                task.cancel()

    async def serve_and_cancel(
        public: Any,
        internal: Any,
        settings: EngineSettings,
        on_stop: Callable[[], object],
        listeners: serving.Listeners,
    ) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, cancel)
        await serve(public, internal, settings, on_stop, listeners)

    serving.serve = serve_and_cancel


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m backbone.dev.faults <service package> <cli args...>")
        return 2
    source = os.environ if env is None else env
    install(
        _ms(source, "FAULT_STALL_MS"),
        _ms(source, "FAULT_DELAY_MS"),
        _ms(source, "FAULT_KILL_IN_FLIGHT"),
    )
    if source.get("FAULT_KILL_AT"):
        kill_at(source["FAULT_KILL_AT"])
    if source.get("FAULT_CANCEL_ON_SIGUSR1"):
        cancel_on_signal(source["FAULT_CANCEL_ON_SIGUSR1"])
    cli = importlib.import_module(f"{args[0]}.cli")
    code: int = cli.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
