"""The two Kafka group requests aiokafka lacks in the versions static members need.

LeaveGroup v3 (KIP-345) names each member by ``member_id`` and ``group_instance_id``: a
member id of "" removes whichever member holds the instance id. DescribeGroups v4 tells
each member's ``group_instance_id``. Neither version is flexible, so aiokafka's plain
request header and types serve.
"""

from __future__ import annotations

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

_STRING = String("utf-8")


class LeaveGroupResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(("member_id", _STRING), ("group_instance_id", _STRING), ("error_code", Int16)),
        ),
    )


class LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", _STRING),
        ("members", Array(("member_id", _STRING), ("group_instance_id", _STRING))),
    )


class LeaveGroupRequest(Request[LeaveGroupRequest_v3]):  # type: ignore[misc]
    """Remove ``members``: (member id or "", group instance id) pairs."""

    API_KEY = 13

    def __init__(self, group: str, members: list[tuple[str, str]]) -> None:
        self.group = group
        self.members = members

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        return request_struct_class(self.group, self.members)


class DescribeGroupsResponse_v4(Response):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 4
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group", _STRING),
                ("state", _STRING),
                ("protocol_type", _STRING),
                ("protocol", _STRING),
                (
                    "members",
                    Array(
                        ("member_id", _STRING),
                        ("group_instance_id", _STRING),
                        ("client_id", _STRING),
                        ("client_host", _STRING),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class DescribeGroupsRequest_v4(RequestStruct):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 4
    RESPONSE_TYPE = DescribeGroupsResponse_v4
    SCHEMA = Schema(("groups", Array(_STRING)), ("include_authorized_operations", Boolean))


class DescribeGroupsRequest(Request[DescribeGroupsRequest_v4]):  # type: ignore[misc]
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self.group = group

    def build(
        self, request_struct_class: type[DescribeGroupsRequest_v4]
    ) -> DescribeGroupsRequest_v4:
        return request_struct_class([self.group], False)
