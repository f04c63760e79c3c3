"""Fault injection for the kill tests, kept out of production code.

``python -m backbone.dev.faults <service package> <cli args...>`` runs the service's
command line (``<package>.cli.main``) with the processor's publishing of a batch
(``Processor._publish_all``) wrapped:

- ``FAULT_STALL_MS``: a pause before the batch's records are published, after the
  membership check, logged as ``fault_stall``: a window in which a test freezes the node
  (SIGSTOP) to make a zombie writer.
- ``FAULT_DELAY_MS``: a pause after Kafka acked them and before the store write: a wider
  window for a SIGKILL to land between the changelog and the store.

- ``FAULT_KILL_AT``: the name of a point (``backbone.repartition.faults.POINTS``: a
  repartitioning step, or a ``dlq replay`` batch sent) at which the process SIGKILLs
  itself, logged as ``fault_kill`` first; ``<point>@<n>``: the n-th time it is reached.

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
from backbone.processing.apply import BatchResult
from backbone.processing.processor import Processor
from backbone.repartition import faults

log = structlog.get_logger(__name__)

VARIABLES = ("FAULT_STALL_MS", "FAULT_DELAY_MS", "FAULT_KILL_AT")


def _ms(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not an integer") from None
    if value < 0:
        raise SystemExit(f"error: {name}={value} is below the minimum of 0")
    return value


def install(stall_ms: int = 0, delay_ms: int = 0) -> None:
    """Wrap ``Processor._publish_all`` with the pauses (in this process, for every node)."""
    publish_all = Processor._publish_all

    async def _publish_all(self: Processor, results: list[BatchResult]) -> list[Sent | None]:
        if stall_ms:
            log.warning("fault_stall", partitions=sorted(r.partition for r in results))
            await asyncio.sleep(stall_ms / 1000)
        sent = await publish_all(self, results)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return sent

    Processor._publish_all = _publish_all  # type: ignore[method-assign]


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


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m backbone.dev.faults <service package> <cli args...>")
        return 2
    source = os.environ if env is None else env
    install(_ms(source, "FAULT_STALL_MS"), _ms(source, "FAULT_DELAY_MS"))
    if source.get("FAULT_KILL_AT"):
        kill_at(source["FAULT_KILL_AT"])
    cli = importlib.import_module(f"{args[0]}.cli")
    code: int = cli.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
