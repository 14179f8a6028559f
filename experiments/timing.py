"""Where a command's wall time goes: seconds per phase, from process start to the last file.

Every command records its phases (``startup``, ``imports``, ``data``,
``compile``, ``train``, ``checkpoints``, ``scoring``, ``plots``, ``files`` ...)
in a :class:`Timings` and writes them to its completion file under
``"timings"``, so each run says how long its user waited and for what.
Wall-clock seconds, measured, never estimated; ``other`` is what no phase
claims (logging, hooks, Python between phases).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

# The program's start on the wall clock; Linux tells us the process's real start
# (interpreter start-up included), elsewhere the first import of this module stands in.
_IMPORTED = time.time()


def process_start() -> float:
    """The wall-clock time (``time.time()``) at which this process started, or at which
    ``run.sh`` exec'd Python (``JAX_VAE_EXEC_TIME``): its install is not part of a run."""
    started = _started()
    try:
        return max(started, float(os.environ.get("JAX_VAE_EXEC_TIME", "-inf")))
    except ValueError:
        return started


def _started() -> float:
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # Field 22: starttime.
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
    except (OSError, ValueError, IndexError):
        return _IMPORTED
    # Seconds since boot at start (clock ticks) against seconds since boot now.
    return min(now - (uptime - ticks / os.sysconf("SC_CLK_TCK")), _IMPORTED)


class Timings:
    """Seconds per named phase; a phase measured several times adds up.

    Args:
      start: Wall-clock time (``time.time()``) the total counts from: a command
        passes :func:`process_start`; None means now.
    """

    def __init__(self, start: float | None = None):
        self.start = time.time() if start is None else start
        self.phases: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the wall time of the ``with`` block to phase ``name``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def elapsed(self) -> float:
        """Seconds since ``start``."""
        return time.time() - self.start

    def record(self) -> dict[str, float]:
        """The phases, ``other`` (the rest) and ``total`` (since ``start``)."""
        total = self.elapsed()
        phases = {k: round(v, 3) for k, v in self.phases.items()}
        return {**phases, "other": round(total - sum(self.phases.values()), 3),
                "total": round(total, 3)}  # fmt: skip

