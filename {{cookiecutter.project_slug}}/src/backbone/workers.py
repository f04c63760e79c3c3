"""``WORKERS`` > 1: one node as several processes.

A Python process runs one handler at a time, so a node uses more cores as more members of
the group, each with its own share of the partitions, as Kafka Streams runs several stream
threads per instance. This process only starts them, passes SIGTERM and SIGINT on, and
starts again a worker that dies. They die with it, even when it is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import structlog

from backbone.settings import EngineSettings, SettingsError

log = structlog.get_logger(__name__)

# Set in each worker's environment: its index (a worker serves the shared public port), and
# the internal URLs of all the node's workers, comma-separated (backbone.http.siblings).
WORKER_ENV = "BACKBONE_WORKER"
WORKER_URLS_ENV = "BACKBONE_WORKER_URLS"
# A worker that dies this soon after its start is taken as misconfigured (a port in use,
# refused credentials): starting it again would only fail again, so the node stops.
MIN_UPTIME_S = 10.0
_PR_SET_PDEATHSIG = 1


def worker_env(
    settings: EngineSettings, index: int, environ: Mapping[str, str], token: str = ""
) -> dict[str, str]:
    """The environment of worker ``index``: the node's, with what must differ per worker.
    ``token``: the workers' ``INTERNAL_TOKEN`` when the node has none, so that they forward
    reads to each other."""
    env = dict(environ)
    env.update(
        {
            WORKER_ENV: str(index),
            "WORKERS": "1",
            "NODE_ID": f"{settings.node_id}-{index}",
            "NODE_HOST": settings.host or settings.node_id,
            "DATA_DIR": str(settings.data_dir / f"worker-{index}"),
            "INTERNAL_PORT": str(settings.internal_port + index),
        }
    )
    if not settings.internal_token and token:
        env["INTERNAL_TOKEN"] = token
    if settings.read_model and not settings.read_model_url:
        from backbone.readmodel.model import database_url

        # The node's SQLite database, not one per worker: worker 0 projects into it and
        # every worker lists from it (backbone.http.app).
        env["READ_MODEL_URL"] = database_url(settings)
    urls = [_shifted(settings.internal_url, i) for i in range(settings.workers)]
    env.update({"INTERNAL_URL": urls[index], WORKER_URLS_ENV: ",".join(urls)})
    return env


def siblings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """In a worker: the internal URL of each other worker of its node, by index. Empty in a
    node of one process."""
    me, urls = environ.get(WORKER_ENV), environ.get(WORKER_URLS_ENV)
    if me is None or not urls:
        return {}
    return {str(i): url for i, url in enumerate(urls.split(",")) if str(i) != me}


def _shifted(url: str, index: int) -> str:
    parts = urlsplit(url)
    if parts.port is None:
        raise SettingsError(
            f"INTERNAL_URL {url!r} names no port: with WORKERS > 1, worker i is reached at "
            "that port + i. Give the port, for example https://node-0.internal:9000"
        )
    host = parts.netloc.rpartition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port + index}"))


def _die_with(parent: int) -> None:
    """In the worker, before it runs: the kernel kills it when its parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


class Supervisor:
    def __init__(
        self, settings: EngineSettings, command: Sequence[str], environ: Mapping[str, str]
    ) -> None:
        self.command = list(command)
        token = secrets.token_hex(32)
        self.envs = [worker_env(settings, i, environ, token) for i in range(settings.workers)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.stopping = False

    def run(self) -> int:
        """Until every worker has exited after SIGTERM or SIGINT (or after a worker failed
        at its start); returns the first non-zero exit code of a worker, else 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for worker in range(len(self.envs)):
            self._start(worker)
        log.info("workers_started", pids=[p.pid for p in self.procs.values()])
        code = 0
        while self.procs:
            pid, status = os.wait()
            index = next((i for i, p in self.procs.items() if p.pid == pid), None)
            if index is None:
                continue
            returncode = os.waitstatus_to_exitcode(status)
            self.procs.pop(index).returncode = returncode  # reaped here, not by Popen
            if self.stopping:
                code = code or _exit_code(returncode)
                continue
            uptime = time.monotonic() - self.started[index]
            log.error("worker_exited", worker=index, pid=pid, code=returncode)
            if uptime < MIN_UPTIME_S:
                log.error(
                    "workers_stopping",
                    reason=f"worker {index} exited {uptime:.1f} s after its start, with code "
                    f"{returncode}: its log says why. Fix that and start the node again",
                )
                code = _exit_code(returncode) or 1
                self._stop()
                continue
            self._start(index)
        return code

    def _start(self, index: int) -> None:
        parent = os.getpid()
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
        # passes it on once.
        self.procs[index] = subprocess.Popen(
            self.command,
            env=self.envs[index],
            process_group=0,
            preexec_fn=lambda: _die_with(parent),
        )
        self.started[index] = time.monotonic()

    def _stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
