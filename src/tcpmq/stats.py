"""What the broker is doing now: the `stats` op's answer, which `/metrics` reads too.

Rates come from counters the broker keeps (one add per publish run, pull
call or ack call: see broker.py), sampled by one timer every
`SAMPLE_INTERVAL` seconds. A rate is the counters' growth from the oldest
sample kept (at most `RATE_WINDOW` seconds old) to now, divided by the
time between: no clock is read per message, and a rate answers at once
after traffic starts or stops. Everything else is read from the broker's
state when asked (depths, in flight, waiting pulls, the oldest message),
as `queue.list` does; disk use and fsync times come from the store.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from .broker import Broker, Channel, Queue
from .registry import Connections
from .storage import DiskStore
from .wire import head_id

SAMPLE_INTERVAL = 1.0
#: Rates are averaged over about this many seconds.
RATE_WINDOW = 5.0


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float  # loop time
    published: int
    delivered: int
    acked: int


class Counters(Protocol):
    """Messages published, delivered and acked since start (one add per call)."""

    messages_published: int
    messages_delivered: int
    messages_acked: int


def _counters(broker: Broker | None) -> Counters:
    assert broker is not None, "a shared store passes its own counters"
    return broker


class Observer:
    """Reads the broker, the connections and the store for `stats` and `/metrics`."""

    def __init__(
        self,
        broker: Broker | None,
        connections: Connections,
        store: DiskStore | None,
        store_name: str,
        loop: asyncio.AbstractEventLoop,
        counters: Counters | None = None,
    ) -> None:
        """`broker` is None for a shared store: its channels are not in this
        process, and `counters` (the backend) count this node's traffic."""
        self.broker = broker
        self.counters: Counters = counters if counters is not None else _counters(broker)
        self.connections = connections
        self.store = store
        self.store_name = store_name
        self._loop = loop
        self.started_at = time.time()
        self._samples: deque[_Sample] = deque(maxlen=int(RATE_WINDOW / SAMPLE_INTERVAL) + 1)
        self._samples.append(self._sample())
        self._timer: asyncio.TimerHandle | None = loop.call_later(SAMPLE_INTERVAL, self._tick)
        #: Why the server is not ready for traffic (see `readiness`), set while it stops.
        self.stopping = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sample(self) -> _Sample:
        broker = self.counters
        return _Sample(
            self._loop.time(),
            broker.messages_published,
            broker.messages_delivered,
            broker.messages_acked,
        )

    def _tick(self) -> None:
        self._samples.append(self._sample())
        self._timer = self._loop.call_later(SAMPLE_INTERVAL, self._tick)

    # -- what is asked ------------------------------------------------------------

    def rates(self) -> dict[str, float]:
        """Messages per second over the last `RATE_WINDOW` seconds (and the span used)."""
        oldest, now = self._samples[0], self._sample()
        span = now.at - oldest.at
        if span <= 0:
            return {"published": 0.0, "delivered": 0.0, "acked": 0.0, "seconds": 0.0}
        return {
            "published": (now.published - oldest.published) / span,
            "delivered": (now.delivered - oldest.delivered) / span,
            "acked": (now.acked - oldest.acked) / span,
            "seconds": span,
        }

    def readiness(self) -> str | None:
        """Why the broker should get no traffic now, or None when it is ready."""
        if self.stopping:
            return "shutting down"
        if self.store is not None and self.store.full is not None:
            return f"storage_full: {self.store.full}"
        return None

    def store_stats(self) -> dict[str, Any]:
        store = self.store
        if store is None:
            return {
                "name": self.store_name,
                "disk_bytes": None,
                "free_bytes": None,
                "full": None,
                "fsync": None,
            }
        summary = store.sync_times.summary()
        return {
            "name": self.store_name,
            "disk_bytes": store.disk_bytes(),
            "free_bytes": store.free_bytes,
            "full": store.full,
            "fsync": {
                "syncs": store.syncs,
                "recent": summary.recent,
                "p50": summary.p50,
                "p99": summary.p99,
                "max": summary.max,
            },
        }

    def stats(self) -> dict[str, Any]:
        """The result of the `stats` op (protocol.md, stats)."""
        broker = self.broker
        counters = self.counters
        now = time.time()
        connections = self.connections
        channels = [] if broker is None else [broker.channels[n] for n in sorted(broker.channels)]
        return {
            "uptime": max(0.0, now - self.started_at),
            "connections": {
                "open": len(connections),
                "authenticated": connections.authenticated_count,
            },
            "rates": self.rates(),
            "totals": {
                "published": counters.messages_published,
                "delivered": counters.messages_delivered,
                "acked": counters.messages_acked,
            },
            "memory_bytes": None if broker is None else int(broker.memory),
            "store": self.store_stats(),
            "channels": [channel_stats(channel) for channel in channels],
            "queues": [
                queue_stats(channel, channel.queues[name], now)
                for channel in channels
                for name in sorted(channel.queues)
            ],
        }


def channel_stats(channel: Channel) -> dict[str, Any]:
    queues = channel.queues.values()
    return {
        "name": channel.name,
        "published": channel.published,
        "queue_count": len(queues),
        "depth": sum(queue.depth for queue in queues),
        "inflight": sum(queue.inflight_count for queue in queues),
    }


def queue_stats(channel: Channel, queue: Queue, now: float) -> dict[str, Any]:
    """A queue object (see `queue.list`) with `lag`, `delivered` and `acked`."""
    info = queue.info(now)
    oldest = queue.oldest()
    # How far the queue's oldest unacked message is behind the channel's
    # newest one, in ids (acked ones between included), as Kafka's consumer
    # lag counts offsets: 0 when it holds nothing.
    info["lag"] = 0 if oldest is None else channel.next_id - head_id(oldest)
    info["delivered"] = queue.delivered
    info["acked"] = queue.acked
    return info
