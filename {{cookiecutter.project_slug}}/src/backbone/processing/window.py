"""When this processor applied its first and its last event, and the CPU it took between:
a throughput measured from outside (bench/throughput.py) starts at the first event
applied, not at the first time somebody looked."""

from __future__ import annotations

import time
from typing import Any


class AppliedWindow:
    def __init__(self) -> None:
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._first_cpu = 0.0
        self._last_cpu = 0.0

    def starting(self) -> None:
        if self.first_at is None:
            self.first_at = time.time()
            self._first_cpu = time.process_time()

    def applied(self) -> None:
        self.last_at = time.time()
        self._last_cpu = time.process_time()

    def as_dict(self) -> dict[str, Any]:
        """Wall clock times (seconds since the epoch) and the process's CPU seconds
        (every thread) from the start of the first batch to the end of the last."""
        return {
            "first_at": self.first_at,
            "last_at": self.last_at,
            "cpu_s": round(self._last_cpu - self._first_cpu, 4),
        }
