"""Partition assignment: the planner (pure), its group-protocol bytes and the aiokafka assignor."""

from backbone.assignment.assignor import BackboneAssignor
from backbone.assignment.planner import MemberInfo, Plan, plan
from backbone.assignment.protocol import (
    AssignmentData,
    MemberMetadata,
    decode_assignment,
    decode_metadata,
    encode_assignment,
    encode_metadata,
)
from backbone.assignment.view import (
    RoutingView,
    RoutingViewError,
    ViewMember,
    build_view,
    decode_view,
    encode_view,
)

__all__ = [
    "AssignmentData",
    "BackboneAssignor",
    "MemberInfo",
    "MemberMetadata",
    "Plan",
    "RoutingView",
    "RoutingViewError",
    "ViewMember",
    "build_view",
    "decode_assignment",
    "decode_metadata",
    "decode_view",
    "encode_assignment",
    "encode_metadata",
    "encode_view",
    "plan",
]
