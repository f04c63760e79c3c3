"""Partition assignment: the planner (pure), its group-protocol bytes and the aiokafka assignor."""

from backbone.assignment.assignor import BackboneAssignor
from backbone.assignment.planner import MemberInfo, Plan, plan
from backbone.assignment.protocol import (
    AssignmentData,
    MemberMetadata,
    decode_assignment,
    decode_member,
    decode_metadata,
    encode_assignment,
    encode_metadata,
)

__all__ = [
    "AssignmentData",
    "BackboneAssignor",
    "MemberInfo",
    "MemberMetadata",
    "Plan",
    "decode_assignment",
    "decode_member",
    "decode_metadata",
    "encode_assignment",
    "encode_metadata",
    "plan",
]
