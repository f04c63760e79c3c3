"""The credential of the public ``/admin`` routes: ``Authorization: Bearer <ADMIN_TOKEN>``.

Compared in constant time. A node without ``ADMIN_TOKEN`` keeps its ``/admin`` routes
closed (403, saying how to open them); a missing or wrong token answers 401.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

HOW = "send 'Authorization: Bearer <ADMIN_TOKEN>' (the node's ADMIN_TOKEN setting)"


def admin_guard(expected: str) -> Any:
    """A Litestar guard admitting the bearer of ``expected`` only."""
    headers = {"www-authenticate": 'Bearer realm="admin"'}

    # async: Litestar runs a plain function guard in a worker thread, per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not expected:
            raise PermissionDeniedException(
                "this node has no ADMIN_TOKEN set, so its /admin routes are closed: set "
                "ADMIN_TOKEN to a secret (e.g. `openssl rand -hex 32`) and " + HOW
            )
        header = connection.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise NotAuthorizedException(f"no admin token: {HOW}", headers=headers)
        if not hmac.compare_digest(header[7:].encode(), expected.encode()):
            raise NotAuthorizedException(f"wrong admin token: {HOW}", headers=headers)

    return guard
