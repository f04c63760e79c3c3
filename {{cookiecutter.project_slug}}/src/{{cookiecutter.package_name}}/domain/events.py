"""Events of the {{ cookiecutter.aggregate_name }} aggregate.

Each is a frozen msgspec struct serialised as JSON with a snake_case ``type`` tag, e.g.
``{"type": "order_placed", "order_id": "o-1", "amount_cents": 1250}``. When you change a
shape, raise its ``schema_version`` and register an upcaster in handlers.py.
"""

from typing import Annotated, ClassVar

import msgspec

from backbone import Event

Cents = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)]
OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class CustomerRegistered(Event, frozen=True, kw_only=True):
    name: Name
    email: Email


class ProfileUpdated(Event, frozen=True, kw_only=True):
    name: Name | None = None
    email: Email | None = None


class OrderPlaced(Event, frozen=True, kw_only=True):
    """Version 2 renamed ``amount`` (a float in currency units) to ``amount_cents``."""

    schema_version: ClassVar[int] = 2
    order_id: OrderId
    amount_cents: Cents


class OrderRefunded(Event, frozen=True, kw_only=True):
    order_id: OrderId
    amount_cents: Cents


class LoyaltyPointsEarned(Event, frozen=True, kw_only=True):
    points: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]


class TierChanged(Event, frozen=True, kw_only=True):
    """Emitted by the service when lifetime value moves the {{ cookiecutter.aggregate_name }} to another tier."""

    previous: str
    tier: str


EMITTED_EVENTS: tuple[type[Event], ...] = (TierChanged,)
