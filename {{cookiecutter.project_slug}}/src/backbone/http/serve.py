"""Run the public and the internal HTTP listeners in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from backbone.http.coalesce import CoalescingHttpTools
from backbone.settings import EngineSettings, SettingsError
from backbone.workers import WORKER_ENV


class _Server(uvicorn.Server):
    """Signals are handled once for both servers, in :func:`serve`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _config(
    app: Any, host: str, port: int, http: Any = "httptools", **extra: Any
) -> uvicorn.Config:
    # httptools, not h11: /health/live went from about 3,000 to 6,000-7,000 answers/s.
    # The public server's answers are small and many: one send each (backbone.http.coalesce).
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        log_config=None,
        log_level="warning",
        access_log=False,
        **extra,
    )


Listeners = tuple[socket.socket, socket.socket]


def listen(settings: EngineSettings) -> Listeners:
    """The public and internal sockets, bound before the node starts anything: a port in
    use stops it in words. The workers of a node share the public one (backbone.workers)."""
    shared = WORKER_ENV in os.environ
    return (
        _bound(settings.http_host, settings.http_port, "HTTP_PORT", shared=shared),
        _bound(settings.http_host, settings.internal_port, "INTERNAL_PORT", shared=False),
    )


async def serve(
    public: Any,
    internal: Any,
    settings: EngineSettings,
    on_stop: Callable[[], object],
    listeners: Listeners,
) -> None:
    """Until SIGTERM or SIGINT, which calls ``on_stop`` at once (the engine's handoff)."""
    tls: dict[str, Any] = {}
    if settings.tls_cert:
        tls = {
            "ssl_certfile": settings.tls_cert,
            "ssl_keyfile": settings.tls_key,
            "ssl_ca_certs": settings.tls_ca,
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    front = _Server(
        _config(public, settings.http_host, settings.http_port, http=CoalescingHttpTools)
    )
    back = _Server(
        _config(internal, settings.http_host, settings.internal_port, lifespan="off", **tls)
    )

    def stop() -> None:
        # The internal API serves on until the engine (in the public app's lifespan) has
        # stopped and left the group: peers that see it refuse connections remove it.
        front.should_exit = True
        on_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    front_socket, back_socket = listeners
    tasks = {
        asyncio.create_task(front.serve([front_socket])),
        asyncio.create_task(back.serve([back_socket])),
    }
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    front.should_exit = back.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)


def _bound(host: str, port: int, setting: str, *, shared: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:  # each worker binds it, and the kernel spreads the connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SettingsError(
            f"{setting}={port} on {host} cannot be used: {exc.strerror}. Another node or "
            f"program listens there: stop it, or give this node another {setting}"
        ) from None
    return sock
