"""Remove static members from a consumer group, by their ``group.instance.id``.

A static member does not leave its group when it stops (aiokafka sends no LeaveGroup for
it), so its partitions wait for its session to time out. Removing it as
``kafka-consumer-groups --delete --members`` does starts the rebalance at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.errors import KafkaError, for_code

from backbone.assignment.protocol import decode_metadata
from backbone.kafka_connection import kafka_connection
from backbone.membership.protocol import DescribeGroupsRequest, LeaveGroupRequest
from backbone.settings import EngineSettings

log = structlog.get_logger(__name__)

NO_ERROR = "NoError"
Send = Callable[[Any], Awaitable[Any]]


def instance_id(settings: EngineSettings) -> str:
    """The node's ``group.instance.id`` (static membership, docs/decisions/0003)."""
    return f"{settings.service}-{settings.node_id}"


@dataclass(frozen=True)
class Member:
    member_id: str
    instance_id: str
    endpoint: str  # of its internal API, from its join metadata


def _admin(settings: EngineSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **kafka_connection(settings).kwargs(), client_id=f"{instance_id(settings)}-membership"
    )


@asynccontextmanager
async def _coordinator(settings: EngineSettings, group: str) -> AsyncIterator[Send]:
    """Sends requests to ``group``'s coordinator, over one admin connection."""
    admin = _admin(settings)
    await admin.start()
    try:
        node = await admin.find_coordinator(group)

        async def send(request: Any) -> Any:
            return await admin._send_request(request, node)

        yield send
    finally:
        await admin.close()


def _error(code: int) -> str:
    return NO_ERROR if code == 0 else for_code(code).__name__


async def _describe(send: Send, group: str) -> list[Member]:
    """The members of ``group`` now, with their instance ids and endpoints."""
    response = await send(DescribeGroupsRequest(group))
    members = []
    for code, _, _, _, _, listed, _ in response.groups:
        if code:
            raise for_code(code)(f"describing group {group}")
        for member_id, instance, _, _, metadata, _ in listed:
            endpoint = ""
            if metadata:  # none while the member is joining
                user_data = ConsumerProtocolMemberMetadata.decode(metadata).user_data
                endpoint = decode_metadata(user_data).endpoint
            members.append(Member(member_id, instance or "", endpoint))
    return members


async def _remove(
    send: Send, group: str, members: list[tuple[str, str]], reason: str
) -> dict[str, str]:
    """Remove ``members`` ((member id or "", instance id) pairs) from ``group``; returns
    each instance's error name, ``NoError`` when it was removed. Every outcome is logged."""
    response = await send(LeaveGroupRequest(group, members))
    if response.error_code:
        log.warning(
            "group_members_not_removed",
            group=group,
            reason=reason,
            members=[instance for _, instance in members],
            error=_error(response.error_code),
        )
        return {instance: _error(response.error_code) for _, instance in members}
    outcome = {}
    for member_id, instance, code in response.members:
        outcome[instance] = _error(code)
        log.info(
            "group_member_removed" if code == 0 else "group_member_not_removed",
            group=group,
            reason=reason,
            instance=instance,
            member_id=member_id,
            error=outcome[instance],
        )
    return outcome


async def leave(settings: EngineSettings, group: str) -> dict[str, str]:
    """Remove this node's own static membership: called once its consumer has stopped."""
    try:
        async with _coordinator(settings, group) as send:
            return await _remove(send, group, [("", instance_id(settings))], "stopped")
    except KafkaError as exc:
        log.warning("group_leave_failed", group=group, error=str(exc))
        return {}


async def remove_dead(settings: EngineSettings, group: str, endpoint: str) -> dict[str, str]:
    """Remove the members whose internal API is ``endpoint``, named by member id too: if
    the node restarted and joined again meanwhile, the coordinator keeps the new member."""
    async with _coordinator(settings, group) as send:
        members = [
            (m.member_id, m.instance_id)
            for m in await _describe(send, group)
            if m.endpoint == endpoint and m.instance_id
        ]
        return await _remove(send, group, members, f"dead peer {endpoint}") if members else {}
