"""The aggregate id rule, defined once for every route that takes an id.

An id is the Kafka key of its events and the key of its aggregate in the store, and it is
read back through ``GET /<plural>/{id}``, so it must survive a trip through any ordinary
HTTP client unchanged: no ``/`` (a path separator, even as ``%2F``), not ``.`` or ``..``
(clients resolve them away), no control characters, and valid UTF-8 once percent-decoded
(``a%FFb`` would otherwise be stored as ``a\\ufffdb`` and collide with other ids).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

MAX_ID_LENGTH = 256

ID_RULE = (
    f"an id is 1 to {MAX_ID_LENGTH} characters of UTF-8 text (percent-encoded in the URL), "
    "not blank, not '.' or '..', with no '/' (nor %2F) and no control characters"
)


# Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidIdError(ValueError):
    """The id breaks :data:`ID_RULE`; the message says how and states the rule."""


def id_problem(aggregate_id: str) -> str | None:
    """What is wrong with ``aggregate_id``, or ``None`` when it follows the rule."""
    if not aggregate_id.strip():
        return "the id is empty or blank"
    if len(aggregate_id) > MAX_ID_LENGTH:
        return f"the id is {len(aggregate_id)} characters long"
    if aggregate_id in (".", ".."):
        return f"the id is {aggregate_id!r}"
    if "/" in aggregate_id:
        return "the id contains '/'"
    control = _CONTROL.search(aggregate_id)
    if control is not None:
        return f"the id contains the control character U+{ord(control[0]):04X}"
    return None


def check_id(aggregate_id: str) -> str:
    """``aggregate_id`` if it follows the rule, else :class:`InvalidIdError`."""
    problem = id_problem(aggregate_id)
    if problem is not None:
        raise InvalidIdError(f"{problem}: {ID_RULE}")
    return aggregate_id


def check_raw_path(raw_path: bytes | None) -> None:
    """Refuse a request path whose percent-encoding is not valid UTF-8.

    ASGI servers decode the path with replacement characters, so the handler cannot tell
    ``a%FFb`` from ``a%EF%BF%BDb``; the raw path can. Without a raw path there is nothing
    more to check.
    """
    if not raw_path:
        return
    try:
        unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidIdError(
            f"the path is not valid UTF-8 once percent-decoded: {ID_RULE}"
        ) from None
