"""``repartition``: ask a live service for another partition count, follow the change,
show its state, retire the previous generation, or abort a change that has not passed
its barrier. Everything goes through the control log; the nodes do the work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from backbone.kafka_connection import kafka_connection
from backbone.repartition.control import ControlLog, open_control_log
from backbone.repartition.coordinator import retire as retire_generation
from backbone.repartition.layout import check_counts
from backbone.repartition.plan import ABORTED, REQUESTED, Generation, Generations
from backbone.repartition.status import describe
from backbone.settings import EngineSettings
from backbone.topics import Topics


class RepartitionError(RuntimeError):
    """The change cannot be asked for or did not finish; the message says why."""


async def _open(settings: EngineSettings) -> ControlLog:
    return await open_control_log(settings, f"{settings.service}-repartition")


async def current_generation(settings: EngineSettings) -> Generation:
    """The generation in force, for the admin commands that name topics or partitions."""
    control = await _open(settings)
    try:
        return control.state.current
    finally:
        await control.stop()


async def status(settings: EngineSettings) -> dict[str, Any]:
    control = await _open(settings)
    try:
        return describe(control.state)
    finally:
        await control.stop()


async def request(
    settings: EngineSettings,
    partitions: int,
    wait_s: float | None,
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Ask for ``partitions``; with ``wait_s``, follow the change until it switched."""
    control = await _open(settings)
    try:
        state = control.state
        if state.plan is not None:
            plan = state.plan
            raise RepartitionError(
                f"a change to {plan.target.partitions} partitions is already under way "
                f"(step {plan.step}): follow it with `repartition --status`"
            )
        if state.previous is not None:
            raise RepartitionError(
                f"generation {state.previous.source.number} is not retired yet: once no "
                "producer writes to its input, run `repartition --retire`, then ask again"
            )
        check_counts(state.current.partitions, partitions)
        target = state.current.number + 1
        await control.append(target, REQUESTED, "cli", to=partitions, at=time.time())
        if wait_s is None:
            control.follow()
            while control.state.plan is None:
                await control.wait_changed(1.0)
            return describe(control.state)
        return await _follow(control, target, wait_s, show)
    finally:
        await control.stop()


async def _follow(
    control: ControlLog, target: int, wait_s: float, show: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    last = None
    control.follow()
    seen = False
    while True:
        state: Generations = control.state
        view = describe(state)
        step = view.get("change", {}).get("step")
        change = view.get("change", {})
        summary = (step, change.get("drained"), change.get("derived"))
        if summary != last:
            show(view)
            last = summary
        if state.current.number >= target:
            return view
        if state.plan is not None:
            seen = True
        elif seen:
            raise RepartitionError("the change was aborted")
        if time.monotonic() > deadline:
            raise RepartitionError(
                f"the change did not finish within {wait_s:.0f} s (step {step}); it goes on: "
                f"follow it with `repartition --status`. Blocked: {view['change']['blocked']}"
            )
        await asyncio.sleep(0.5)


async def retire(settings: EngineSettings) -> dict[str, Any]:
    control = await _open(settings)
    try:
        previous = control.state.previous
        if previous is None:
            raise RepartitionError("there is no previous generation to retire")
        topics = Topics(settings.service, settings.store)
        await retire_generation(control, kafka_connection(settings), topics, previous, "cli")
        await control.wait_changed(5.0)
        return describe(control.state)
    finally:
        await control.stop()


async def abort(settings: EngineSettings) -> dict[str, Any]:
    control = await _open(settings)
    try:
        plan = control.state.plan
        if plan is None:
            raise RepartitionError("no change is under way")
        if plan.barrier is not None:
            raise RepartitionError(
                "the change passed its barrier: writes already go to the new topic, so it "
                "can only complete. `repartition --status` shows what it waits for"
            )
        await control.append(plan.target.number, ABORTED, "cli", at=time.time())
        await control.wait_changed(5.0)
        return describe(control.state)
    finally:
        await control.stop()
