"""Shared by the benchmarks: bake the default service and start what they need."""

from __future__ import annotations

import sys
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
    import os
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
