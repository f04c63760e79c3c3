"""Peer liveness without Kafka: when a peer counts as dead, who removes it, and the bytes of
the LeaveGroup v3 request that removes a static member."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from io import BytesIO
from types import SimpleNamespace
from typing import Any

from backbone.membership.protocol import (
    LeaveGroupRequest,
    LeaveGroupRequest_v3,
    LeaveGroupResponse_v3,
)
from backbone.node.peer_watch import PeerWatch, _Peer
from backbone.node.routing import Replica
from backbone.settings import EngineSettings

A, B, C = "http://a:9000", "http://b:9000", "http://c:9000"


def test_two_refusals_in_a_row_make_a_peer_dead() -> None:
    peer = _Peer()
    peer.missed(1.0, refused=True)
    assert not peer.dead(3.0)
    peer.missed(1.05, refused=True)
    assert peer.dead(3.0)


def test_a_timeout_between_refusals_starts_the_count_again() -> None:
    peer = _Peer()
    peer.missed(1.0, refused=True)
    peer.missed(1.25, refused=False)
    peer.missed(1.5, refused=True)
    assert not peer.dead(3.0)


def test_a_silent_peer_is_dead_once_its_unanswered_probes_span_the_limit() -> None:
    peer = _Peer()
    for sent in (10.0, 10.25, 12.75):
        peer.missed(sent, refused=False)
    assert not peer.dead(3.0)
    peer.missed(13.0, refused=False)
    assert peer.dead(3.0)
    peer.answered(frozenset())
    assert not peer.dead(3.0)


def test_one_probe_that_spans_the_prober_s_own_pause_is_not_enough() -> None:
    """A probe sent before this node was paused times out when it wakes: the span between
    probes sent is zero, however long the pause."""
    peer = _Peer()
    peer.missed(10.0, refused=False)
    assert not peer.dead(3.0)


@dataclass
class FakeRouting:
    members: list[Replica]
    routes: Any = field(default_factory=lambda: SimpleNamespace(generation=7))


class FakeCoordinator:
    generation = 7
    rejoins = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


class FakeHttp:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def post(self, url: str, **kwargs: Any) -> Any:
        self.posts.append((url, kwargs["params"]))
        http = self

        class Answer:
            async def __aenter__(self) -> FakeHttp:
                return http

            async def __aexit__(self, *_: object) -> None:
                return None

        return Answer()


def watch(self_url: str, removed: list[str]) -> tuple[PeerWatch, FakeHttp, FakeCoordinator]:
    async def remove(url: str) -> None:
        removed.append(url)

    http, coordinator = FakeHttp(), FakeCoordinator()
    members = [Replica(n, "", url) for n, url in (("a", A), ("b", B), ("c", C))]
    clients = SimpleNamespace(
        routing=FakeRouting(members), http=http, consumer=SimpleNamespace(_coordinator=coordinator)
    )
    settings = EngineSettings(service="s", store="agg", internal_url=self_url, internal_token="t")
    return PeerWatch(clients, settings, remove), http, coordinator  # type: ignore[arg-type]


def dead(peer: _Peer) -> _Peer:
    peer.missed(1.0, refused=True)
    peer.missed(1.05, refused=True)
    return peer


def test_the_lowest_live_url_removes_once_every_live_peer_suspects_too() -> None:
    removed: list[str] = []
    a, http, coordinator = watch(A, removed)
    a._peers = {B: _Peer(), C: dead(_Peer())}
    assert asyncio.run(a._decide()), "waits for b's vote"
    assert removed == [], "b still reached c at its latest answer"

    a._peers[B].answered(frozenset({C}))
    asyncio.run(a._decide())
    asyncio.run(a._decide())  # the same generation: not twice
    assert removed == [C]
    assert coordinator.rejoins == 1
    assert http.posts == [(B + "/internal/rejoin", {"generation": 7})]


def test_a_live_peer_with_a_lower_url_decides() -> None:
    removed: list[str] = []
    b, _, _ = watch(B, removed)
    b._peers = {A: _Peer(), C: dead(_Peer())}
    b._peers[A].answered(frozenset({C}))
    asyncio.run(b._decide())
    assert removed == []

    b._peers[A] = dead(_Peer())  # a died too: b is the lowest live one now
    asyncio.run(b._decide())
    assert removed == [A, C]


def test_leave_group_v3_names_members_by_instance_id() -> None:
    request = LeaveGroupRequest("grp", [("", "svc-n1")]).build(LeaveGroupRequest_v3)
    assert request.encode() == (
        b"\x00\x03grp" + b"\x00\x00\x00\x01" + b"\x00\x00" + b"\x00\x06svc-n1"
    )
    answer = (
        b"\x00\x00\x00\x00"  # throttle
        + b"\x00\x00"  # no error for the request
        + b"\x00\x00\x00\x01"
        + b"\x00\x00"
        + b"\x00\x06svc-n1"
        + b"\x00\x19"  # 25: UNKNOWN_MEMBER_ID
    )
    response = LeaveGroupResponse_v3.decode(BytesIO(answer))
    assert response.error_code == 0
    assert list(response.members) == [("", "svc-n1", 25)]
