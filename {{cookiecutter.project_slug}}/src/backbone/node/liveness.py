"""Whether a node's long-running tasks still run: what ``/health/live`` reports."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backbone.node.engine import Parts


def ended(task: asyncio.Task[Any] | None, what: str) -> str | None:
    """Why ``task`` is no longer running, None while it runs (or before it starts)."""
    if task is None or not task.done():
        return None
    if task.cancelled():
        return f"the {what} task was cancelled"
    exc = task.exception()
    if exc is None:
        return f"the {what} task ended"
    return f"the {what} task died: {type(exc).__name__}: {exc}"


def dead_parts(parts: Parts[Any] | None, processing: asyncio.Task[None] | None) -> list[str]:
    """The parts whose task ended while they should run. A node that is starting or
    switching generations (no parts) or stopping them (the processor's lock is held while
    its task is cancelled) is not dead."""
    if parts is None:
        return []
    found = [
        None if parts.processor.lock.locked() else ended(processing, "processor"),
        ended(parts.clients.reader.task, "changelog reader"),
        ended(parts.clients.routing.task, "routing table"),
    ]
    return [reason for reason in found if reason is not None]
