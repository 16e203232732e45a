"""The broker's state in the Prometheus exposition format, made when scraped.

A custom collector reads the `Observer` (stats.py) at each scrape, on the
event loop, and `prometheus_client.generate_latest` writes the text: no
metric objects updated on the hot path, no thread reading the broker.
Counters are the broker's own (since start; a channel's `published` is kept
across restarts); rates are left to PromQL (`rate(...[1m])`).

Names are `tcpmq_...` with their unit as suffix (`_total`, `_bytes`,
`_seconds`); per-queue series carry `channel` and `queue` labels, so
their number is bounded by the queue limits (`max_channels` x
`max_queues_per_channel`, and `max_queues_per_user` per user).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from . import __version__
from .stats import Observer, queue_stats
from .storage.synctimes import BUCKETS


class BrokerCollector:
    """Yields the broker's metrics as they are at the scrape."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def collect(self) -> Iterator[Metric]:
        observer = self._observer
        broker = observer.broker
        counters = observer.counters
        yield InfoMetricFamily(
            "tcpmq_build",
            "The broker's version and store",
            {"version": __version__, "store": observer.store_name},
        )
        yield GaugeMetricFamily(
            "tcpmq_start_time_seconds", "When the broker started (UNIX time)", observer.started_at
        )
        connections = observer.connections
        yield GaugeMetricFamily("tcpmq_connections", "Open connections", len(connections))
        yield GaugeMetricFamily(
            "tcpmq_connections_authenticated",
            "Open connections that have authenticated",
            connections.authenticated_count,
        )
        for name, value, what in (
            ("published", counters.messages_published, "published"),
            (
                "delivered",
                counters.messages_delivered,
                "delivered by pulls (redeliveries included)",
            ),
            ("acked", counters.messages_acked, "acknowledged"),
        ):
            yield CounterMetricFamily(
                f"tcpmq_messages_{name}_total", f"Messages {what} since the broker started", value
            )
        if broker is None:  # a shared store: its channels are not in this process
            yield from self._store()
            return
        yield GaugeMetricFamily(
            "tcpmq_memory_bytes",
            "The broker's estimate of the memory its messages take (max_memory_bytes)",
            broker.memory,
        )
        yield from self._queues()
        yield from self._store()

    def _queues(self) -> Iterator[Metric]:
        broker = self._observer.broker
        assert broker is not None
        published = CounterMetricFamily(
            "tcpmq_channel_messages_published_total",
            "Messages published to the channel since it was created",
            labels=["channel"],
        )
        label = ["channel", "queue"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "depth": GaugeMetricFamily(
                "tcpmq_queue_ready_messages", "Ready messages", labels=label
            ),
            "inflight": GaugeMetricFamily(
                "tcpmq_queue_inflight_messages", "Delivered, unacknowledged messages", labels=label
            ),
            "consumers": GaugeMetricFamily(
                "tcpmq_queue_consumers", "Pulls waiting on the queue now", labels=label
            ),
            "redeliveries": GaugeMetricFamily(
                "tcpmq_queue_redelivery_messages",
                "Ready messages that were delivered before",
                labels=label,
            ),
            "lag": GaugeMetricFamily(
                "tcpmq_queue_lag_messages",
                "Ids from the oldest message held to the channel's newest",
                labels=label,
            ),
            "oldest_age": GaugeMetricFamily(
                "tcpmq_queue_oldest_message_age_seconds",
                "Age of the oldest message held, ready or in flight (absent when none)",
                labels=label,
            ),
            "delivered": CounterMetricFamily(
                "tcpmq_queue_messages_delivered_total",
                "Messages the queue delivered since the broker started",
                labels=label,
            ),
            "acked": CounterMetricFamily(
                "tcpmq_queue_messages_acked_total",
                "Messages acknowledged in the queue since the broker started",
                labels=label,
            ),
        }
        now = time.time()
        for channel in broker.channels.values():
            published.add_metric([channel.name], channel.published)
            for queue in channel.queues.values():
                stats = queue_stats(channel, queue, now)
                labels = [channel.name, queue.name]
                for key, family in families.items():
                    value = stats[key]
                    if value is not None:
                        family.add_metric(labels, value)
        yield published
        yield from families.values()

    def _store(self) -> Iterator[Metric]:
        observer = self._observer
        store = observer.store
        reason = observer.readiness()
        yield GaugeMetricFamily(
            "tcpmq_ready", "1 while the broker takes traffic (see /readyz)", int(reason is None)
        )
        if store is None:
            return
        yield GaugeMetricFamily(
            "tcpmq_store_disk_bytes",
            "Bytes of the store's snapshot and log files",
            store.disk_bytes(),
        )
        if store.free_bytes is not None:
            yield GaugeMetricFamily(
                "tcpmq_store_free_bytes",
                "Free bytes of the store's filesystem at the last probe",
                store.free_bytes,
            )
        yield GaugeMetricFamily(
            "tcpmq_store_full",
            "1 while new data is refused with storage_full",
            int(store.full is not None),
        )
        histogram = store.sync_times.histogram()
        buckets = [
            (repr(bound), count) for bound, count in zip(BUCKETS, histogram.cumulative, strict=True)
        ]
        buckets.append(("+Inf", histogram.count))
        yield HistogramMetricFamily(
            "tcpmq_fsync_seconds",
            "How long the log's group-commit fsyncs took",
            buckets=buckets,
            sum_value=histogram.sum,
        )


def registry_for(observer: Observer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(observer))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The body of `/metrics`: every metric of `registry` as text, version 0.0.4."""
    return generate_latest(registry)
