"""Validate the answers before anything is written.

Every problem is reported at once, one line each on stderr, saying what is wrong and what
is allowed; then the hook exits 1 and cookiecutter stops (and removes the half-made dir).

Cookiecutter renders this file with Jinja before running it. The answers arrive as one JSON
document from Jinja's ``tojson`` filter, which escapes quotes as \\u0027 so that a value
holding a quote, a backslash or a newline cannot break out of the raw string below.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from collections.abc import Callable

# Single quotes on purpose: tojson output holds double quotes and never a single one.
# Parsed in main() only, so that the checks can be imported unrendered (local_extensions.py).
ANSWERS_JSON = r'{{ cookiecutter | tojson }}'  # fmt: skip

ENGINE_PACKAGE = "backbone"
# Import names the generated project already uses: a service package with one of these
# names would shadow it (``tests`` is the generated test package).
TAKEN_PACKAGES = frozenset(
    {
        "tests",
        "aiokafka",
        "rocksdict",
        "litestar",
        "uvicorn",
        "msgspec",
        "httpx",
        "structlog",
        "opentelemetry",
        "sqlalchemy",
        "psycopg",
        "pytest",
        "hypothesis",
        "psutil",
        "ruff",
        "mypy",
    }
)
# Names imported next to the aggregate class in the generated domain modules.
TAKEN_CLASSES = frozenset(
    {"Any", "Context", "Domain", "DomainError", "Event", "Handlers", "State", "Upcasters"}
)
MAX_PARTITIONS = 10_000
# The longest names whose generated code still passes its own ruff check and format (lines of
# at most 100 characters): tests/test_bake.py bakes exactly these lengths.
MAX_LENGTHS = {
    "project_name": 60,
    "project_slug": 36,
    "package_name": 36,
    "aggregate_name": 20,
    "aggregate_class": 20,
    "aggregate_plural": 22,
}
MAX_STANDBY_REPLICAS = 10

SLUG = re.compile(r"[a-z][a-z0-9-]*")
PACKAGE = re.compile(r"[a-z_][a-z0-9_]*")
AGGREGATE = re.compile(r"[a-z][a-z0-9_]*")
PLURAL = re.compile(r"[a-z0-9][a-z0-9_-]*")
CLASS = re.compile(r"[A-Z][A-Za-z0-9_]*")
ZONE = re.compile(r"[a-z0-9-]+")
BAD_NAME_CHARS = re.compile(r'["\\{}\x00-\x1f\x7f]')


def _text(answers: dict[str, object], key: str) -> str:
    value = answers.get(key, "")
    return value if isinstance(value, str) else str(value)


def check_project_name(value: str) -> list[str]:
    if not value.strip():
        return [
            "project_name is empty: give the service a human-readable name "
            "(e.g. 'Customer Backbone')"
        ]
    if BAD_NAME_CHARS.search(value):
        return [
            f"project_name {value!r} contains a quote, backslash, brace or control character: "
            "use plain words (e.g. 'Customer Backbone')"
        ]
    return []


def check_project_slug(value: str) -> list[str]:
    if SLUG.fullmatch(value) and not value.endswith("-"):
        return []
    unspelled = "" if value.isascii() else " (set project_slug and package_name yourself)"
    return [
        f"project_slug {value!r} is not a valid distribution name: use lowercase letters, "
        "digits and '-', starting with a letter and not ending with '-' (e.g. 'customer-backbone')"
        + unspelled
    ]


def check_package_name(value: str) -> list[str]:
    if not PACKAGE.fullmatch(value):
        return [
            f"package_name {value!r} is not a valid Python package name: use lowercase "
            "letters, digits and '_', not starting with a digit (e.g. 'customer_backbone')"
        ]
    if keyword.iskeyword(value):
        return [
            f"package_name {value!r} is a Python keyword: choose another name "
            f"(e.g. '{value}_service')"
        ]
    if value == ENGINE_PACKAGE:
        return [
            f"package_name {value!r} is the engine's package name: choose another name "
            "(e.g. 'customer_backbone')"
        ]
    if value in sys.stdlib_module_names:
        return [
            f"package_name {value!r} is a standard library module and would shadow it: "
            f"choose another name (e.g. '{value}_service')"
        ]
    if value in TAKEN_PACKAGES:
        return [
            f"package_name {value!r} is already used by the generated project "
            f"(one of {', '.join(sorted(TAKEN_PACKAGES))}): choose another name "
            f"(e.g. '{value}_service')"
        ]
    return []


def check_aggregate_name(value: str) -> list[str]:
    if not AGGREGATE.fullmatch(value):
        return [
            f"aggregate_name {value!r} is not a lowercase identifier: use lowercase letters, "
            "digits and '_', starting with a letter (e.g. 'customer')"
        ]
    if keyword.iskeyword(value):
        return [
            f"aggregate_name {value!r} is a Python keyword: choose another name "
            f"(e.g. '{value}_item')"
        ]
    return []


def check_aggregate_plural(value: str) -> list[str]:
    if PLURAL.fullmatch(value):
        return []
    return [
        f"aggregate_plural {value!r} is not URL-safe: use lowercase letters, digits, '-' and "
        "'_', starting with a letter or digit (e.g. 'customers')"
    ]


def check_aggregate_class(value: str) -> list[str]:
    if not CLASS.fullmatch(value) or keyword.iskeyword(value):
        return [
            f"aggregate_class {value!r} is not a valid class name: use letters, digits and '_', "
            "starting with an uppercase letter, not a keyword (e.g. 'Customer')"
        ]
    if value in TAKEN_CLASSES:
        return [
            f"aggregate_class {value!r} clashes with a name the generated domain code imports "
            f"({', '.join(sorted(TAKEN_CLASSES))}): choose another name (e.g. '{value}Aggregate')"
        ]
    return []


def check_int(key: str, value: str, low: int, high: int) -> list[str]:
    allowed = f"use a whole number from {low} to {high}"
    if not re.fullmatch(r"0|[1-9][0-9]*", value):
        return [f"{key} {value!r} is not a whole number (no sign, no leading zeros): {allowed}"]
    number = int(value)
    if not low <= number <= high:
        return [f"{key} {value!r} is out of range: {allowed}"]
    return []


def check_include_read_model(value: str) -> list[str]:
    if value in ("yes", "no"):
        return []
    return [f"include_read_model {value!r} is not allowed: answer 'yes' or 'no'"]


def check_zones(value: str) -> list[str]:
    allowed = (
        "give comma-separated zone names of lowercase letters, digits and '-', without "
        "spaces or duplicates (e.g. 'zone-a,zone-b,zone-c')"
    )
    zones = value.split(",")
    problems = [
        f"zones {value!r}: zone {zone!r} is not a valid zone name: {allowed}"
        for zone in zones
        if not ZONE.fullmatch(zone)
    ]
    duplicates = sorted({zone for zone in zones if zones.count(zone) > 1 and ZONE.fullmatch(zone)})
    if duplicates:
        problems.append(f"zones {value!r} has duplicate zones {', '.join(duplicates)}: {allowed}")
    return problems


def check_length(key: str, value: str) -> list[str]:
    limit = MAX_LENGTHS[key]
    if len(value) <= limit:
        return []
    fix = {
        "project_slug": "shorten project_name, or set project_slug and package_name",
        "package_name": "shorten project_name, or set package_name",
        "aggregate_class": "shorten aggregate_name, or set aggregate_class",
        "aggregate_plural": "shorten aggregate_name, or set aggregate_plural",
    }.get(key, "use a shorter name")
    return [
        f"{key} {value!r} is {len(value)} characters long, more than the {limit} that keep "
        f"the generated code within its 100-character lines: {fix}"
    ]


def problems_in(answers: dict[str, object]) -> list[str]:
    text = {key: _text(answers, key) for key in answers}
    get = text.get

    def named(key: str, check: Callable[[str], list[str]]) -> list[str]:
        value = get(key, "")
        return check(value) or check_length(key, value)

    name_problems = named("project_name", check_project_name)

    def derived(key: str, check: Callable[[str], list[str]]) -> list[str]:
        # A name with nothing usable in it derives an empty slug and package: the name's own
        # problem says it all.
        return [] if name_problems and not get(key, "") else named(key, check)

    return [
        *name_problems,
        *derived("project_slug", check_project_slug),
        *derived("package_name", check_package_name),
        *named("aggregate_name", check_aggregate_name),
        *named("aggregate_plural", check_aggregate_plural),
        *named("aggregate_class", check_aggregate_class),
        *check_int("partitions", get("partitions", ""), 1, MAX_PARTITIONS),
        *check_int("standby_replicas", get("standby_replicas", ""), 0, MAX_STANDBY_REPLICAS),
        *check_include_read_model(get("include_read_model", "")),
        *check_zones(get("zones", "")),
    ]


def main() -> int:
    problems = problems_in(json.loads(ANSWERS_JSON))
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} invalid answer(s): nothing was generated.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
