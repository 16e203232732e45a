"""The six scenarios of the benchmark, each one measurement against one running server.

Each scenario takes a freshly started server, its peer adapter and the sizes
of this run, and returns its figures by metric key (see report.METRICS). The
clock starts only after every command is encoded and every connection is
open and set up. Every wait is bounded: the caller runs each scenario under
a timeout, and the loops here are bounded by count or by time.

`cpu` figures are the load generator's own CPU time over the measured
interval, as a fraction of its core: near 1.0 it, not the server, would be
the limit. `server_cpu` is the same for the server process (all threads):
near 1.0 the server is bound by its core, well below it by waiting (for the
disk, or for the clients).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .loadgen import Consumer, Cycler, Link, Publisher, Sink, chunked, perf
from .peers import Peer
from .servers import Server

CHUNK = 100  # publish commands per write
WINDOW = 1000  # unanswered publishes per publisher (tcpmq's max_pipeline)
BATCH = 100  # messages per pull
WAIT = 1.0  # long-poll seconds
OPEN_AT_ONCE = 200  # connections opened concurrently (below every listen backlog)
MAX_PUBLISHES = 10_000_000  # S6 runs for a time, and this many at most

Figures = dict[str, float]


@dataclass(frozen=True, slots=True)
class Sizes:
    s1_messages: int = 200_000
    s2_messages: int = 50_000
    s2_queues: int = 8
    s3_rate: int = 5_000
    s3_seconds: float = 5.0
    s4_messages: int = 1_000_000
    s5_idle: int = 5_000
    s5_active: int = 1_000
    s5_rate: float = 10.0  # cycles per second per active connection
    s5_seconds: float = 5.0
    s6_publishers: int = 16
    s6_seconds: float = 3.0


QUICK = Sizes(
    s1_messages=20_000,
    s2_messages=5_000,
    s3_seconds=1.0,
    s4_messages=50_000,
    s5_idle=500,
    s5_active=100,
    s5_seconds=2.0,
    s6_seconds=1.0,
)


async def wait_all(sinks: list[Sink]) -> None:
    """Wait for every sink; the first failure fails the scenario."""
    await asyncio.gather(*(sink.done for sink in sinks))


def close(links: list[Link]) -> None:
    for link in links:
        link.close()


async def open_many(peer: Peer, count: int, first: int = 0) -> list[Link]:
    links: list[Link] = []
    for start in range(first, first + count, OPEN_AT_ONCE):
        stop = min(start + OPEN_AT_ONCE, first + count)
        opening = [peer.open(peer.identity(index)) for index in range(start, stop)]
        links.extend(await asyncio.gather(*opening))
    return links


async def _throughput(server: Server, peer: Peer, channel: str, queues: int, n: int) -> Figures:
    """One publisher, a consumer per queue; deliveries/s from first publish to last delivery."""
    names = [f"q{i}" for i in range(queues)]
    control = await peer.open()
    await peer.setup(control, channel, names)
    publisher_link = await peer.open()
    consumer_links = [await peer.open() for _ in names]
    links = [control, publisher_link, *consumer_links]
    try:
        chunks = chunked(
            lambda seqs: peer.encode_publishes(publisher_link, channel, seqs), n, CHUNK
        )
        publisher = Publisher(
            publisher_link, iter(chunks), CHUNK, n, WINDOW, peer.reply_counter(publisher_link)
        )
        consumers = [
            Consumer(link, peer.consumer(link, channel, name, BATCH, WAIT), n)
            for link, name in zip(consumer_links, names, strict=True)
        ]
        for consumer in consumers:
            consumer.start()
        cpu, server_cpu, started = time.process_time(), server.cpu(), perf()
        publisher.start()
        await wait_all([publisher, *consumers])
        ended = max(publisher.finished_at, *(c.finished_at for c in consumers))
        elapsed = ended - started
        return {
            "rate": n * queues / elapsed,
            "cpu": (time.process_time() - cpu) / elapsed,
            "server_cpu": (server.cpu() - server_cpu) / elapsed,
        }
    finally:
        close(links)


async def s1(server: Server, peer: Peer, sizes: Sizes) -> Figures:
    return await _throughput(server, peer, "s1", 1, sizes.s1_messages)


async def s2(server: Server, peer: Peer, sizes: Sizes) -> Figures:
    return await _throughput(server, peer, "s2", sizes.s2_queues, sizes.s2_messages)


class _Replies(Sink):
    """Counts publish replies (and fails on an error reply) for a paced publisher."""

    def __init__(self, link: Link, count: Callable[[bytes], int], total: int) -> None:
        super().__init__(link)
        self.count = count
        self.total = total
        self.acked = 0
        link.sink = self

    def feed(self, data: bytes) -> None:
        self.acked += self.count(data)
        if self.acked >= self.total:
            self.finish()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def s3(server: Server, peer: Peer, sizes: Sizes) -> Figures:
    """Publish at a fixed rate; one long-polling consumer; publish-to-delivery latency."""
    total = int(sizes.s3_rate * sizes.s3_seconds)
    control = await peer.open()
    await peer.setup(control, "s3", ["q"])
    publisher_link, consumer_link = await peer.open(), await peer.open()
    links = [control, publisher_link, consumer_link]
    try:
        frames = [peer.encode_publishes(publisher_link, "s3", [seq]) for seq in range(total)]
        send_times = [0.0] * total
        replies = _Replies(publisher_link, peer.reply_counter(publisher_link), total)
        consumer = Consumer(
            consumer_link, peer.consumer(consumer_link, "s3", "q", BATCH, WAIT), total, send_times
        )
        consumer.start()
        await asyncio.sleep(0.1)  # the pulls are waiting before the first publish
        started = perf()
        sent = 0
        while sent < total and not replies.done.done():
            due = min(total, int((perf() - started) * sizes.s3_rate) + 1)
            if due > sent:
                now = perf()
                send_times[sent:due] = [now] * (due - sent)
                publisher_link.write(b"".join(frames[sent:due]))
                sent = due
            await asyncio.sleep(0.0005)
        await wait_all([replies, consumer])
        latencies = consumer.latencies
        return {
            "p50": _percentile(latencies, 0.5) * 1000,
            "p99": _percentile(latencies, 0.99) * 1000,
            "max": max(latencies) * 1000,
        }
    finally:
        close(links)


async def s4(server: Server, peer: Peer, sizes: Sizes) -> Figures:
    """Queue N messages nobody pulls: server memory per message, then restart time."""
    n = sizes.s4_messages
    control = await peer.open()
    await peer.setup(control, "s4", ["q"])
    link = await peer.open()
    try:
        before = server.rss()
        chunks = (
            peer.encode_publishes(link, "s4", range(start, start + CHUNK))
            for start in range(0, n, CHUNK)
        )
        publisher = Publisher(link, chunks, CHUNK, n, WINDOW, peer.reply_counter(link))
        publisher.start()
        await wait_all([publisher])
        figures = {"bytes_per_message": (server.rss() - before) / n}
    finally:
        close([control, link])
    if server.spec.durable:
        figures["restart"] = await server.restart()
    return figures


async def s5(server: Server, peer: Peer, sizes: Sizes) -> Figures:
    """Many idle authenticated connections (memory each), then many active ones."""
    await peer.identities(sizes.s5_idle)
    control = await peer.open()
    await peer.setup(control, "s5", ["q"])
    links = [control]
    try:
        before = server.rss()
        links += await open_many(peer, sizes.s5_idle)
        figures = {"kib_per_connection": (server.rss() - before) / sizes.s5_idle / 1024}
        if server.spec.name == "null":
            return figures  # it keeps nothing: latency through it would mean nothing
        active = links[1 : 1 + sizes.s5_active]
        period = 1 / sizes.s5_rate
        cycles = int(sizes.s5_seconds * sizes.s5_rate) + 2
        send_times = [0.0] * (len(active) * cycles)
        counter = itertools.count()
        cyclers = [
            Cycler(link, peer.cycle(link, "s5", "q", WAIT), counter.__next__, send_times)
            for link in active
        ]
        started = perf() + 0.05
        until = started + sizes.s5_seconds
        cpu = time.process_time()
        outcomes = await asyncio.gather(
            *(
                cycler.run(started + period * index / len(active), period, until)
                for index, cycler in enumerate(cyclers)
            ),
            return_exceptions=True,
        )
        elapsed = perf() - started
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        latencies = [latency for cycler in cyclers for latency in cycler.latencies]
        figures.update(
            {
                "active_rate": len(latencies) / elapsed,
                "active_p99": _percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
                "active_errors": float(len(errors)),
                "active_cpu": (time.process_time() - cpu) / elapsed,
            }
        )
        if errors:
            print(f"    S5 {server.spec.name}: {len(errors)} errors, first: {errors[0]}")
        return figures
    finally:
        close(links)


async def _acked_rate(
    server: Server, peer: Peer, publishers: int, seconds: float
) -> tuple[float, float]:
    """Acknowledged publishes/s, and the server's CPU share meanwhile."""
    links = [await peer.open() for _ in range(publishers)]
    try:
        sinks = [
            Publisher(
                link,
                itertools.cycle([peer.encode_publishes(link, "s6", [seq]) for seq in range(1000)]),
                1,
                MAX_PUBLISHES,
                1,
                peer.reply_counter(link),
            )
            for link in links
        ]
        server_cpu, started = server.cpu(), perf()
        for sink in sinks:
            sink.until = started + seconds
            sink.start()
        await wait_all(sinks)
        elapsed = max(sink.finished_at for sink in sinks) - started
        return sum(sink.acked for sink in sinks) / elapsed, (server.cpu() - server_cpu) / elapsed
    finally:
        close(links)


async def s6(server: Server, peer: Peer, sizes: Sizes) -> Figures:
    """Publishers that wait for each reply: acknowledged publishes/s, 1 and N of them."""
    control = await peer.open()
    await peer.setup(control, "s6", ["q"])
    try:
        one, one_cpu = await _acked_rate(server, peer, 1, sizes.s6_seconds)
        many, many_cpu = await _acked_rate(server, peer, sizes.s6_publishers, sizes.s6_seconds)
        return {
            "one": one,
            "many": many,
            "scaling": many / one,
            "one_server_cpu": one_cpu,
            "many_server_cpu": many_cpu,
        }
    finally:
        close([control])


Scenario = Callable[[Server, Peer, Sizes], Awaitable[Figures]]

SCENARIOS: dict[str, Scenario] = {"S1": s1, "S2": s2, "S3": s3, "S4": s4, "S5": s5, "S6": s6}

# Which servers a scenario means something for: the null broker keeps no
# messages, so it has no latency, no backlog and no restart. JetStream with
# sync_interval always syncs each message alone (about 5,000/s here): its
# memory is the other JetStream's, and filling it would take many minutes.
SKIP = {"S3": {"null"}, "S4": {"null", "nats-sync"}}

# Generous bounds per measurement, in seconds.
TIMEOUTS = {"S1": 180.0, "S2": 180.0, "S3": 60.0, "S4": 900.0, "S5": 300.0, "S6": 60.0}
