"""How long the log's fsyncs take: recent quantiles and a histogram since start.

The log's sync thread records one duration per group-commit round (one
round covers every reply waiting for it, so this costs nothing per
message); the event loop reads them for `stats` and `/metrics`. Both sides
take the one lock, held for a few list operations.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

#: How many of the latest syncs the quantiles are taken over.
RECENT_SYNCS = 1024
#: Upper bounds of the histogram's buckets, in seconds: a sync of a virtio or
#: NVMe disk takes 0.05 to 2 ms, a network disk (EBS) 0.5 to 10 ms, and a
#: sync beyond 100 ms is a stall worth an alert.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True, slots=True)
class SyncSummary:
    """The recent syncs' quantiles (seconds; None before the first sync)."""

    recent: int
    p50: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class SyncHistogram:
    """Every sync since start: cumulative counts per bucket of `BUCKETS`, then all."""

    cumulative: list[int]
    count: int
    sum: float


class SyncTimes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=RECENT_SYNCS)
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._count = 0
        self._sum = 0.0

    def record(self, seconds: float) -> None:
        """One sync took `seconds` (called from the sync thread)."""
        with self._lock:
            self._recent.append(seconds)
            self._buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._count += 1
            self._sum += seconds

    def summary(self) -> SyncSummary:
        with self._lock:
            recent = sorted(self._recent)
        if not recent:
            return SyncSummary(0, None, None, None)
        return SyncSummary(len(recent), _quantile(recent, 0.5), _quantile(recent, 0.99), recent[-1])

    def histogram(self) -> SyncHistogram:
        with self._lock:
            buckets = list(self._buckets)
            count, total = self._count, self._sum
        cumulative = []
        running = 0
        for bucket in buckets[:-1]:
            running += bucket
            cumulative.append(running)
        return SyncHistogram(cumulative, count, total)


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list."""
    rank = max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.5) - 1))
    return ordered[rank]
