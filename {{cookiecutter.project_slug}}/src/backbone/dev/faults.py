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

- ``FAULT_KILL_AT``: the name of a repartitioning step
  (``backbone.repartition.faults.POINTS``) at which the node SIGKILLs itself, logged as
  ``fault_kill`` first.

The pauses default to 0 (none), the kill to none.
``backbone.dev.cluster.NodeProcess(..., faults=...)`` starts a node this way.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Mapping

import structlog

from backbone.changelog.writer import Sent
from backbone.processing.processor import Processor, Staged
from backbone.repartition import faults

log = structlog.get_logger(__name__)

VARIABLES = ("FAULT_STALL_MS", "FAULT_DELAY_MS", "FAULT_KILL_AT", "FAULT_KILL_IN_FLIGHT")


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


def kill_at(point: str) -> None:
    """SIGKILL this process when the repartitioning reaches ``point``."""
    if point not in faults.POINTS:
        raise SystemExit(f"error: FAULT_KILL_AT={point!r} is not one of {', '.join(faults.POINTS)}")

    def hook(name: str) -> None:
        if name == point:
            log.warning("fault_kill", point=name)
            os.kill(os.getpid(), signal.SIGKILL)

    faults.hook = hook


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
    cli = importlib.import_module(f"{args[0]}.cli")
    code: int = cli.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
