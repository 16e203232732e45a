"""A consumer that never reads its replies, while a publisher floods: the broker's RSS.

    python -m bench.slow_consumer [--seconds 45] [--max-queue-messages 50000]

One `tcpmq serve` (durable default), one queue with a 10 s ack timeout. The
consumer authenticates, then keeps writing `pull` requests (max 1000) and
never reads a byte; the publisher floods 100-byte messages in batches of 100
(pipelined, reading its replies) for `--seconds`. The queue is capped at
`--max-queue-messages`, so its own share of memory is known (about 20 MiB
for 50,000 messages); what the consumer costs on top is its write buffer
(write_buffer_high, 4 MiB, and one reply beyond it) and its read-but-not-
handled requests (max_pipeline_bytes). The consumer is closed by
write_stall_timeout (30 s) and dropped after close_linger (5 s), hence the
45 s default: long enough to see it go and the memory settle after it,
where 60 s would show nothing more. Its pulled messages return to the queue
at their ack timeout.

It prints RSS at start, peak and end, when the consumer was closed, and the
queue at the end (depth, in flight). Bounded by `--seconds` plus timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson

from .__main__ import prepare_process
from .servers import PASSWORD, SPECS, Server

MIB = 2**20


class Silent(asyncio.Protocol):
    """The consumer's connection: it never reads what arrives (reading is paused)."""

    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(time.perf_counter())


async def call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **request: object
) -> dict:
    writer.write(orjson.dumps(request) + b"\n")
    reply = orjson.loads(await reader.readline())
    assert reply.get("ok") is True, reply
    return reply


async def publish(port: int, token: str, until: float) -> tuple[int, int]:
    """Flood until `until`; returns (messages accepted, publishes refused)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
    await reader.readline()
    await call(reader, writer, op="auth", token=token)
    batch = orjson.dumps({"op": "publish", "channel": "c", "messages": ["m" * 98] * 100}) + b"\n"
    accepted = refused = 0
    window = 16
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        writer.write(batch * window)
        for _ in range(window):
            reply = orjson.loads(await reader.readline())
            if reply.get("ok"):
                accepted += 100
            else:
                refused += 1
    writer.close()
    return accepted, refused


async def run(args: argparse.Namespace) -> None:
    extra = ("--max-queue-messages", str(args.max_queue_messages))
    with tempfile.TemporaryDirectory() as directory:
        server = Server(SPECS["tcpmq"], Path(directory) / "data", extra)
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=2**24)
            await reader.readline()
            token = (await call(reader, writer, op="login", user="admin", password=PASSWORD))[
                "token"
            ]
            await call(reader, writer, op="channel.create", name="c")
            await call(reader, writer, op="subscribe", channel="c", queue="q", ack_timeout=10)
            before = server.rss()

            transport, silent = await loop.create_connection(Silent, "127.0.0.1", server.port)
            transport.pause_reading()  # never reads: not even the greeting
            transport.write(orjson.dumps({"op": "auth", "token": token}) + b"\n")
            started = time.perf_counter()
            until = loop.time() + args.seconds
            publisher = asyncio.create_task(publish(server.port, token, until))
            pull = orjson.dumps({"op": "pull", "channel": "c", "queue": "q", "max": 1000}) + b"\n"
            peak = before
            while loop.time() < until:
                if not transport.is_closing() and transport.get_write_buffer_size() < MIB:
                    transport.write(pull * 64)
                peak = max(peak, server.rss())
                await asyncio.sleep(0.05)
            accepted, refused = await asyncio.wait_for(publisher, 30)
            end = server.rss()
            closed_at = silent.lost.result() - started if silent.lost.done() else None
            queue = (await call(reader, writer, op="queue.list", channel="c"))["queues"][0]
            transport.abort()
            writer.close()
            print(
                f"non-reading consumer, publisher flooding {args.seconds:g} s "
                f"(queue capped at {args.max_queue_messages} messages):"
            )
            print(
                f"  RSS at start {before / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB "
                f"(+{(peak - before) / MIB:.1f}), at end {end / MIB:.1f} MiB "
                f"(+{(end - before) / MIB:.1f})"
            )
            closed = "not closed" if closed_at is None else f"closed after {closed_at:.1f} s"
            print(
                f"  consumer {closed}; publisher: {accepted} messages accepted, "
                f"{refused} publishes refused (queue full)"
            )
            print(
                f"  queue at end: depth {queue['depth']}, in flight {queue['inflight']}, "
                f"redeliveries {queue['redeliveries']}"
            )
            print(f"  server {'still up' if server.alive() else 'DIED'}")
        finally:
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--max-queue-messages", type=int, default=50_000)
    args = parser.parse_args()
    prepare_process()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
