"""The {{ cookiecutter.aggregate_name }} aggregate: the state folded from its events, stored in RocksDB."""

import msgspec

TIERS: tuple[tuple[str, int], ...] = (
    ("platinum", 1_000_000),
    ("gold", 250_000),
    ("silver", 50_000),
    ("bronze", 0),
)


def tier_for(lifetime_value_cents: int) -> str:
    for name, threshold in TIERS:
        if lifetime_value_cents >= threshold:
            return name
    return TIERS[-1][0]


class {{ cookiecutter.aggregate_class }}(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    email: str
    lifetime_value_cents: int = 0
    order_count: int = 0
    refunded_cents: int = 0
    loyalty_points: int = 0
    tier: str = "bronze"
    version: int = 0
