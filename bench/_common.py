"""Shared by the benchmarks: bake the default service and start what they need."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parent.parent


def bake(workdir: Path, **context: str) -> Path:
    """Bake the template with defaults (plus ``context``) and put its src on sys.path."""
    project = Path(
        cookiecutter(str(ROOT), no_input=True, output_dir=str(workdir), extra_context=context)
    )
    sys.path.insert(0, str(project / "src"))
    return project


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident set (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for pid {pid}")


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


class CpuSplit:
    """The node under test on a core of its own, and the broker, the load generator and this
    process on the others, as clients and brokers are other machines in production. Children
    inherit their parent's CPUs, so this process moves to the node's core to start it."""

    def __init__(self, shared: bool = False) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.on = not shared and len(cpus) >= 2
        self.node = {cpus[0]} if self.on else set(cpus)
        self.rest = set(cpus[1:]) if self.on else set(cpus)
        os.sched_setaffinity(0, self.rest)

    @contextmanager
    def node_side(self) -> Iterator[None]:
        """This process (and what it starts meanwhile) on the node's CPUs."""
        os.sched_setaffinity(0, self.node)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.rest)

    def describe(self) -> dict[str, Any]:
        return {"node_cpus": sorted(self.node), "other_cpus": sorted(self.rest)}
