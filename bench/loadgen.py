"""The load generator's connections and the roles they play, for every peer alike.

A `Link` is one raw TCP connection (an asyncio protocol on uvloop). While a
peer sets it up (greeting, authentication, creating queues) it buffers what
arrives and `read` takes complete replies off the front. Then a role takes
over the byte stream as its `Sink`:

- `Publisher` writes pre-encoded chunks of publish commands, keeps at most
  `window` unanswered, and counts replies with the peer's cheap counter
  (a byte count of line ends, not a parse). A window of one is a client
  that waits for each reply before the next.
- `Consumer` lets the peer's consumer codec parse every delivered message
  and write the acks and next pulls; with `send_times` it records each
  message's publish-to-delivery time from the sequence number in its payload.
- `Cycler` (scenario S5) publishes one message and pulls one, on a schedule.

Nothing waits unboundedly: every role is awaited under its scenario's
timeout, and a lost connection or an error reply fails the role at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

PAYLOAD_BYTES = 100
_PAD = b"x" * (PAYLOAD_BYTES - 12)
# Pulls a consumer keeps in flight, so that batches are on their way while
# one is parsed. Eight saturates Redis and the null broker in S1 (with two,
# neither reaches 70% of its core) and helps tcpmq a little; JetStream gets
# two, its best: more open pull requests cost it more than they bring (S2:
# 354,000 deliveries/s with two, 258,000 with eight).
PULL_WINDOW = 8
JETSTREAM_PULL_WINDOW = 2
READ_TIMEOUT = 60.0  # for one reply during setup (a login hashes a password)
perf = time.perf_counter


def payload(seq: int) -> bytes:
    """100 bytes that are also a JSON string: a 10-digit sequence number, then padding."""
    return b'"%010d%s"' % (seq, _PAD)


def seq_of(message: bytes | bytearray | str) -> int:
    """The sequence number of a payload (bytes with its quote, or the decoded JSON string)."""
    return int(message[:10]) if isinstance(message, str) else int(message[1:11])


class BenchError(Exception):
    """A server answered with an error, dropped a connection, or did not finish in time."""


class Sink:
    """A role that takes over a link's incoming bytes."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


_link_ids = itertools.count(1)


class Link(asyncio.Protocol):
    """One client connection to the server under test."""

    def __init__(self) -> None:
        self.id = next(_link_ids)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sink: Sink | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            try:
                sink.feed(data)
            except Exception as exc:
                sink.fail(exc)
            return
        self.buffer += data
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.sink is not None:
            self.sink.fail(BenchError(f"connection {self.id} lost: {exc or 'closed by server'}"))
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def read(self, take: Callable[[bytearray], int]) -> bytes:
        """Wait until `take(buffer)` finds a complete reply (returns its end, else -1); pop it."""
        async with asyncio.timeout(READ_TIMEOUT):
            while (end := take(self.buffer)) < 0:
                if self.closed:
                    raise BenchError(f"connection {self.id} closed: {bytes(self.buffer)[:200]!r}")
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
        reply = bytes(self.buffer[:end])
        del self.buffer[:end]
        return reply

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(port: int) -> Link:
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(Link, "127.0.0.1", port)
    return link


def line_end(buffer: bytearray) -> int:
    """`take` for one line: the end of the first line (with its newline), else -1."""
    index = buffer.find(b"\n")
    return -1 if index < 0 else index + 1


class ConsumerCodec(Protocol):
    """The peer-specific half of a consumer: what to send, how to parse what comes."""

    stop: bool  # set once the consumer has all it wants: send no more pulls

    def start(self) -> bytes:
        """The first pulls."""
        ...

    def feed(self, data: bytes) -> tuple[list[Any], bytes]:
        """Parse incoming bytes: the payloads delivered, and what to send (acks, pulls)."""
        ...


class CycleCodec(Protocol):
    """The peer-specific half of a `Cycler`."""

    def request(self, seq: int) -> bytes:
        """Publish message `seq`, pull one (long-poll), and ack what the last cycle got."""
        ...

    def feed(self, data: bytes) -> tuple[list[Any], bool]:
        """The payloads delivered, and whether the cycle's replies are all in."""
        ...


class Publisher(Sink):
    """Writes pre-encoded publish chunks with at most `window` commands unanswered."""

    def __init__(
        self,
        link: Link,
        chunks: Iterator[bytes],
        per_chunk: int,
        total: int,
        window: int,
        count: Callable[[bytes], int],
        until: float | None = None,
    ) -> None:
        super().__init__(link)
        self.chunks = chunks
        self.per_chunk = per_chunk
        self.total = total
        self.window = max(window, per_chunk)
        self.count = count
        self.until = until
        self.sent = 0
        self.acked = 0
        self.finished_at = 0.0

    def start(self) -> None:
        self.link.sink = self
        self._fill()

    def _fill(self) -> None:
        if self.until is not None and perf() >= self.until:
            self.total = self.sent  # time is up: wait only for what is in flight
        out = []
        while self.sent < self.total and self.sent - self.acked + self.per_chunk <= self.window:
            out.append(next(self.chunks))
            self.sent += self.per_chunk
        if out:
            self.link.write(out[0] if len(out) == 1 else b"".join(out))

    def feed(self, data: bytes) -> None:
        self.acked += self.count(data)
        self._fill()
        if self.acked >= self.sent >= self.total:
            self.finished_at = perf()
            self.finish()


def chunked(encode: Callable[[Sequence[int]], bytes], total: int, per_chunk: int) -> list[bytes]:
    """Pre-encode publishes of sequence numbers 0..total-1, `per_chunk` commands a chunk."""
    if total % per_chunk:
        raise ValueError("total must be a multiple of the chunk size")
    return [encode(range(start, start + per_chunk)) for start in range(0, total, per_chunk)]


class Consumer(Sink):
    """Pulls through a peer codec until `target` messages arrived."""

    def __init__(
        self,
        link: Link,
        codec: ConsumerCodec,
        target: int,
        send_times: list[float] | None = None,
    ) -> None:
        super().__init__(link)
        self.codec = codec
        self.target = target
        self.received = 0
        self.send_times = send_times
        self.latencies: list[float] = []
        self.finished_at = 0.0

    def start(self) -> None:
        self.link.sink = self
        self.link.write(self.codec.start())

    def feed(self, data: bytes) -> None:
        payloads, out = self.codec.feed(data)
        if payloads:
            self.received += len(payloads)
            if self.send_times is not None:
                now = perf()
                sent = self.send_times
                self.latencies.extend([now - sent[seq_of(p)] for p in payloads])
            if self.received >= self.target and not self.done.done():
                self.codec.stop = True
                self.finished_at = perf()
                self.finish()
        if out and not self.link.closed:
            self.link.write(out)


class Cycler(Sink):
    """Every `period` seconds until `until`: publish one message, pull one, ack the last."""

    def __init__(
        self,
        link: Link,
        codec: CycleCodec,
        next_seq: Callable[[], int],
        send_times: list[float],
    ) -> None:
        super().__init__(link)
        self.codec = codec
        self.next_seq = next_seq
        self.send_times = send_times
        self.latencies: list[float] = []
        self.cycles = 0
        self._cycle: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        payloads, complete = self.codec.feed(data)
        if payloads:
            now = perf()
            self.latencies.extend([now - self.send_times[seq_of(p)] for p in payloads])
        if complete and self._cycle is not None and not self._cycle.done():
            self._cycle.set_result(None)

    async def run(self, first: float, period: float, until: float) -> None:
        self.link.sink = self
        loop = asyncio.get_running_loop()
        at = first
        try:
            while at < until:
                await asyncio.sleep(max(0.0, at - perf()))
                seq = self.next_seq()
                self._cycle = loop.create_future()
                self.send_times[seq] = perf()
                self.link.write(self.codec.request(seq))
                await asyncio.wait([self._cycle, self.done], return_when=asyncio.FIRST_COMPLETED)
                if self.done.done():
                    self.done.result()  # raises the failure
                self.cycles += 1
                at += period
        finally:
            self.finish()
