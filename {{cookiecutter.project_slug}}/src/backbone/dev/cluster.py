"""Service nodes as child processes, for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx

from backbone.dev.ports import free_port, free_ports

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout: float = 60.0,
    what: str = "a condition",
    every: float = 0.1,
    nodes: Iterable[NodeProcess] = (),
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline,
    or at once when one of ``nodes`` (those that must live meanwhile) has exited."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        for node in nodes:
            if not node.alive():
                raise RuntimeError(
                    f"node {node.name} exited while waiting for {what}; its log ends:\n"
                    f"{node.log_tail()}"
                )
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class NodeProcess:
    """One ``<package> run`` process with its own data dir, port and log file.

    ``faults`` (e.g. ``{"FAULT_DELAY_MS": "150"}``) runs it under ``backbone.dev.faults``,
    with those variables set; ``None`` runs the service's command as production does.
    """

    def __init__(
        self,
        package: str,
        name: str,
        workdir: Path,
        env: Mapping[str, str],
        port: int | None = None,
        faults: Mapping[str, str] | None = None,
    ) -> None:
        self.package = package
        self.faults = dict(faults) if faults is not None else None
        self.name = name
        self.port = port or free_port()
        # A worker i of WORKERS listens on INTERNAL_PORT + i.
        self.internal_port = free_ports(1, span=int(env.get("WORKERS", "1")))[0]
        self.data_dir = workdir / name / "data"
        self.log_path = workdir / name / "node.log"
        self.env = {
            **os.environ,
            "NODE_ID": name,
            "HTTP_PORT": str(self.port),
            "INTERNAL_PORT": str(self.internal_port),
            "DATA_DIR": str(self.data_dir),
            **env,
            **(self.faults or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def command(self) -> list[str]:
        if self.faults is not None:
            return [sys.executable, "-m", "backbone.dev.faults", self.package, "run"]
        return [sys.executable, "-m", self.package, "run"]

    def start(self) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, object] | None:
        try:
            response = httpx.get(f"{self.url}/health/ready", timeout=2.0)
        except httpx.HTTPError:
            return None
        body: dict[str, object] = response.json()
        return body

    def wait_ready(self, timeout: float = 60.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"node {self.name} exited:\n{self.log_tail()}")
            status = self.status()
            if status is not None and status.get("ready"):
                return status
            time.sleep(0.1)
        raise TimeoutError(f"node {self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
