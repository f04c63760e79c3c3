"""One handler per event: ``(current state or None, event, ctx) -> new state``.

Handlers are pure: they return a new aggregate (``msgspec.structs.replace``) and never
mutate the old one. Raise ``DomainError`` to reject an event: it goes to the dead-letter
topic with your message, and the partition goes on.
"""

from typing import Any

from msgspec.structs import replace

from backbone import Context, DomainError, Handlers, Upcasters

from {{ cookiecutter.package_name }}.domain.aggregate import {{ cookiecutter.aggregate_class }}, tier_for
from {{ cookiecutter.package_name }}.domain.events import (
    CustomerRegistered,
    LoyaltyPointsEarned,
    OrderPlaced,
    OrderRefunded,
    ProfileUpdated,
    TierChanged,
)

State = {{ cookiecutter.aggregate_class }}
handlers: Handlers[State] = Handlers()
upcasters = Upcasters()


def _existing(state: State | None, ctx: Context) -> State:
    if state is None:
        raise DomainError(f"{{ cookiecutter.aggregate_name }} {ctx.aggregate_id!r} is not registered")
    return state


def _tier(current: State, lifetime_value_cents: int, ctx: Context) -> str:
    """The tier for a new lifetime value; a change of tier is announced (``TierChanged``)."""
    tier = tier_for(lifetime_value_cents)
    if tier != current.tier:
        ctx.emit(TierChanged(previous=current.tier, tier=tier))
    return tier


@handlers.on(CustomerRegistered)
def registered(state: State | None, event: CustomerRegistered, ctx: Context) -> State:
    if state is not None:
        raise DomainError(f"{{ cookiecutter.aggregate_name }} {ctx.aggregate_id!r} is already registered")
    return State(id=ctx.aggregate_id, name=event.name, email=event.email, version=1)


@handlers.on(ProfileUpdated)
def profile_updated(state: State | None, event: ProfileUpdated, ctx: Context) -> State:
    current = _existing(state, ctx)
    return replace(
        current,
        name=event.name or current.name,
        email=event.email or current.email,
        version=current.version + 1,
    )


@handlers.on(OrderPlaced)
def order_placed(state: State | None, event: OrderPlaced, ctx: Context) -> State:
    current = _existing(state, ctx)
    value = current.lifetime_value_cents + event.amount_cents
    return replace(
        current,
        lifetime_value_cents=value,
        order_count=current.order_count + 1,
        tier=_tier(current, value, ctx),
        version=current.version + 1,
    )


@handlers.on(OrderRefunded)
def order_refunded(state: State | None, event: OrderRefunded, ctx: Context) -> State:
    current = _existing(state, ctx)
    if event.amount_cents > current.lifetime_value_cents:
        raise DomainError(
            f"refund of {event.amount_cents} cents exceeds lifetime value "
            f"{current.lifetime_value_cents} of {ctx.aggregate_id!r}"
        )
    value = current.lifetime_value_cents - event.amount_cents
    return replace(
        current,
        lifetime_value_cents=value,
        refunded_cents=current.refunded_cents + event.amount_cents,
        tier=_tier(current, value, ctx),
        version=current.version + 1,
    )


@handlers.on(LoyaltyPointsEarned)
def points_earned(state: State | None, event: LoyaltyPointsEarned, ctx: Context) -> State:
    current = _existing(state, ctx)
    return replace(
        current,
        loyalty_points=current.loyalty_points + event.points,
        version=current.version + 1,
    )


@upcasters.register("order_placed", from_version=1)
def order_placed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 carried ``amount`` in currency units as a float."""
    amount = data.pop("amount")
    data["amount_cents"] = round(float(amount) * 100)
    return data
