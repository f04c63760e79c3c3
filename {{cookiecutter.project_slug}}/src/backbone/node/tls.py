"""The client side of mutual TLS on the internal API."""

from __future__ import annotations

import ssl

from backbone.settings import EngineSettings


def client_tls(settings: EngineSettings) -> ssl.SSLContext | None:
    """The client side of mutual TLS on the internal API, when it is configured."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context
