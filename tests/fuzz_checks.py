"""A schemathesis check for ``tests/test_fuzz_api.py``, loaded as ``SCHEMATHESIS_HOOKS``:
every 4xx answer says what is wrong, in a non-empty ``detail``."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.check
def client_errors_say_why(ctx: Any, response: Any, case: Any) -> None:
    if not 400 <= response.status_code < 500:
        return
    try:
        detail = json.loads(response.content).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str) or not detail.strip():
        raise AssertionError(
            f"{response.status_code} without a message: {response.content[:200]!r}"
        )
