"""Admin commands that act on a running group: accepting the loss of a partition."""

from __future__ import annotations

from typing import Any

import httpx

from backbone.admin.repartition import current_generation
from backbone.kafka_connection import kafka_connection
from backbone.node.routing import RoutingTable
from backbone.node.tls import client_tls
from backbone.settings import EngineSettings
from backbone.topics import Topics


class AdminError(RuntimeError):
    """The command could not be carried out; the message says why and what to do."""


async def accept_loss(
    settings: EngineSettings, partition: int, node_url: str | None = None
) -> dict[str, Any]:
    """Tell the node that owns ``partition`` (or ``node_url``, its internal URL) that the
    partition's deleted history is accepted as lost, so it rebuilds from what is left."""
    generation = await current_generation(settings)
    count = generation.partitions
    if not 0 <= partition < count:
        raise ValueError(f"partition {partition} does not exist: use 0..{count - 1}")
    if node_url is None:
        topics = Topics(settings.service, "", generation.number)
        routing = RoutingTable(kafka_connection(settings), topics.group, topics.routing)
        await routing.start()
        try:
            await routing.refresh()
        finally:
            await routing.stop()
        owner = routing.owner(partition)
        if owner is None:
            raise AdminError(
                f"no member of group {settings.service!r} owns partition {partition}: "
                "start the service, or name the node with --node"
            )
        node_url = owner.endpoint
    tls = client_tls(settings)
    async with httpx.AsyncClient(timeout=30.0, verify=tls if tls else True) as client:
        response = await client.post(
            f"{node_url.rstrip('/')}/internal/partitions/{partition}/accept-loss",
            headers={"authorization": f"Bearer {settings.internal_token}"},
        )
    if response.status_code != 200:
        raise AdminError(f"{node_url} answered {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body
