"""Other load on the machine during a measurement, so that a disturbed one can be repeated.

The suite needs both cores: the server's and the load generator's. Any other
busy process takes time from one of them and bends the figures, latency most.
Over a measurement, the user-mode CPU time of the whole machine (/proc/stat)
minus that of the server and the load generator (/proc/PID/stat, all their
threads) is what other programs took. User time only: the kernel's own work
for our servers (the filesystem journal behind an fsync, say) is not
another program. Above `OTHER_MAX` cores on average the measurement is done
again, at most `RETRIES` times, and before each one the suite waits (at most
`QUIET_WAIT` seconds) for a quiet moment.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

OTHER_MAX = 0.10  # cores; an idle machine shows about 0.01, a test run next door 0.3 and more
RETRIES = 3
QUIET_WAIT = 60.0
_SAMPLE = 0.5  # seconds per look while waiting for quiet
_TICK = os.sysconf("SC_CLK_TCK")


def machine_user() -> float:
    """User-mode CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return (int(fields[1]) + int(fields[2])) / _TICK  # user, nice


def process_user(pid: int) -> float:
    """User-mode CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        # The fields after the command name, which may hold spaces and parentheses.
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK  # utime


def process_cpu(pid: int) -> float:
    """CPU seconds the process's live threads have run, to the nanosecond."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


class OtherLoad:
    """Average cores used by processes other than ours, from `start` to `stop`."""

    def __init__(self) -> None:
        self._machine = self._ours = self._at = 0.0
        self._pids: list[int] = []

    def start(self, *pids: int) -> None:
        self._pids = [os.getpid(), *pids]
        self._machine, self._ours, self._at = machine_user(), self._own(), time.perf_counter()

    def _own(self) -> float:
        return sum(process_user(pid) for pid in self._pids)

    def stop(self) -> float:
        elapsed = time.perf_counter() - self._at
        others = (machine_user() - self._machine) - (self._own() - self._ours)
        return max(0.0, others / elapsed) if elapsed > 0 else 0.0


async def wait_quiet() -> float:
    """Wait until others use at most OTHER_MAX cores (bounded); returns their last load."""
    deadline = time.perf_counter() + QUIET_WAIT
    while True:
        load = OtherLoad()
        load.start()
        await asyncio.sleep(_SAMPLE)
        other = load.stop()
        if other <= OTHER_MAX or time.perf_counter() >= deadline:
            return other
