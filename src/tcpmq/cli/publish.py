"""`tcpmq pub`: one message from the command line, or a stream of them from stdin.

What a message is: DATA (or a line of stdin) that is valid JSON is sent as
that JSON value, anything else as a string; `--raw` sends each as a string.
Without `--raw`, blank lines are skipped.

Theory of operation for stdin: a daemon thread reads stdin in chunks (a
thread, because a regular file cannot be watched by the event loop, and a
blocking read in the loop would hold back replies and signals). The loop
splits each chunk into lines and sends them in batches of `--batch` messages,
also bounded in bytes by the server's `max_frame_bytes`. Up to `WINDOW`
batches are in flight at once, pipelined on the one connection, so the
server's replies and our sends overlap while memory stays bounded; the
server handles them in order, so message ids follow the order of the lines.
What is read is sent when the chunk ends, so a slow producer
(`tail -f log | tcpmq pub logs`) is published line by line, not held back
until a batch fills up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections import deque
from typing import Any

import orjson

from ..client import Client
from ..errors import TcpmqError
from ..models import PublishResult
from .exits import CliError, UsageError, describe
from .runner import Context

DEFAULT_BATCH = 500
# Batches in flight; enough to keep the connection busy both ways.
WINDOW = 8
CHUNK_BYTES = 256 * 1024
# Chunks read ahead of the loop, so memory stays bounded for any input size.
READ_AHEAD = 4
# The publish request around the messages: op, id, channel name, brackets.
ENVELOPE_BYTES = 256
PROGRESS_SECONDS = 0.5


def messages(count: int) -> str:
    return "1 message" if count == 1 else f"{count} messages"


def message(text: bytes, raw: bool) -> Any:
    """The message a line (or DATA) stands for.

    Raises:
        UnicodeDecodeError: it is not valid JSON and not UTF-8 either.
    """
    if not raw:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return text.decode()


async def pub(ctx: Context, args: argparse.Namespace) -> int:
    if args.data is None:
        if ctx.interactive:
            raise UsageError("in the shell, give the message: pub CHANNEL DATA")
        return await _stream(ctx, args)
    data = message(os.fsencode(args.data), args.raw)
    client = await ctx.session.client()
    result = await client.publish(args.channel, data)
    queues = "1 queue" if result.queues == 1 else f"{result.queues} queues"
    ctx.out.result(
        result, f"published message {result.message_ids[0]} to {args.channel!r} ({queues})"
    )
    return 0


class _StdinChunks:
    """Chunks of stdin, read by a daemon thread; b"" at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._room = threading.Semaphore(READ_AHEAD)
        # A daemon: a thread blocked in read() must not keep the process alive after Ctrl-C.
        threading.Thread(target=self._read, name="tcpmq-stdin", daemon=True).start()

    def _read(self) -> None:
        fd = sys.stdin.fileno()
        while True:
            self._room.acquire()
            try:
                chunk: bytes | BaseException = os.read(fd, CHUNK_BYTES)
            except OSError as exc:
                chunk = exc
            try:
                self._loop.call_soon_threadsafe(self._chunks.put_nowait, chunk)
            except RuntimeError:
                return  # the loop is closed: the command is over
            if not chunk or isinstance(chunk, BaseException):
                return

    async def next(self) -> bytes:
        chunk = await self._chunks.get()
        self._room.release()
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


class _Publisher:
    """Batches and pipelined publishes of one stream, with the counts."""

    def __init__(self, client: Client, channel: str, batch: int) -> None:
        self.client = client
        self.channel = channel
        self.batch_size = batch
        max_frame = client.server_info.get("max_frame_bytes")
        frame = max_frame if isinstance(max_frame, int) else 1024 * 1024
        self.batch_bytes = max(1, frame - ENVELOPE_BYTES - len(channel.encode()))
        self.batch: list[Any] = []
        self.size = 0
        self.in_flight: deque[asyncio.Future[PublishResult]] = deque()
        self.published = 0
        self.first_id: int | None = None
        self.last_id: int | None = None

    async def add(self, value: Any) -> None:
        size = len(orjson.dumps(value)) + 1
        if self.batch and self.size + size > self.batch_bytes:
            await self.send()
        self.batch.append(value)
        self.size += size
        if len(self.batch) >= self.batch_size:
            await self.send()

    async def send(self) -> None:
        if not self.batch:
            return
        while len(self.in_flight) >= WINDOW:
            await self._settle()
        batch, self.batch, self.size = self.batch, [], 0
        self.in_flight.append(asyncio.ensure_future(self.client.publish_batch(self.channel, batch)))

    async def _settle(self) -> None:
        self._count(await self.in_flight.popleft())

    def _count(self, result: PublishResult) -> None:
        self.published += len(result.message_ids)
        if result.message_ids:
            if self.first_id is None:
                self.first_id = result.message_ids[0]
            self.last_id = result.message_ids[-1]

    def reap(self) -> None:
        """Count the batches already answered, oldest first (for progress and interruptions)."""
        while self.in_flight and self.in_flight[0].done():
            future = self.in_flight[0]
            if future.cancelled() or future.exception() is not None:
                return  # _settle raises it in its turn
            self.in_flight.popleft()
            self._count(future.result())

    async def finish(self) -> None:
        await self.send()
        while self.in_flight:
            await self._settle()

    async def abandon(self) -> None:
        """After a failure: count what the batches already sent still publish."""
        while self.in_flight:
            with contextlib.suppress(TcpmqError, TimeoutError):
                await self._settle()


class _Progress:
    """A rate line on stderr, rewritten in place, when stderr is a terminal."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.enabled = sys.stderr.isatty()
        self.started = loop.time()
        self.shown_at = self.started

    def show(self, published: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = self.loop.time()
        if not final and now - self.shown_at < PROGRESS_SECONDS:
            return
        self.shown_at = now
        rate = published / max(now - self.started, 1e-9)
        end = "\n" if final else ""
        sys.stderr.write(f"\r{published:,} published, {rate:,.0f}/s\x1b[K{end}")
        sys.stderr.flush()


async def _stream(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    loop = asyncio.get_running_loop()
    if sys.stdin.isatty():
        print("reading messages from stdin, one per line; end with Ctrl-D", file=sys.stderr)
    chunks = _StdinChunks(loop)
    publisher = _Publisher(client, args.channel, args.batch)
    progress = _Progress(loop)
    line_number = 0

    async def add(line: bytes) -> None:
        nonlocal line_number
        line_number += 1
        line = line.removesuffix(b"\r")
        if not args.raw and not line.strip():
            return
        try:
            value = message(line, args.raw)
        except UnicodeDecodeError:
            raise CliError(f"line {line_number} is neither JSON nor UTF-8 text") from None
        await publisher.add(value)

    try:
        rest = b""
        while chunk := await chunks.next():
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                await add(line)
            # Send what this chunk completed: a slow producer's lines go out now.
            await publisher.send()
            publisher.reap()
            progress.show(publisher.published)
        if rest:
            await add(rest)
        await publisher.finish()
    except asyncio.CancelledError:
        publisher.reap()
        print(
            f"tcpmq: interrupted; {messages(publisher.published)} confirmed published",
            file=sys.stderr,
        )
        raise
    except (TcpmqError, TimeoutError, CliError) as exc:
        await publisher.abandon()
        code, reason = describe(exc, ctx.session.url)
        raise CliError(
            f"{reason} ({messages(publisher.published)} published, {line_number} lines read)",
            code,
        ) from None
    progress.show(publisher.published, final=True)
    first_last = (
        f" (ids {publisher.first_id} to {publisher.last_id})" if publisher.published else ""
    )
    ctx.out.result(
        {
            "published": publisher.published,
            "first_id": publisher.first_id,
            "last_id": publisher.last_id,
        },
        f"published {messages(publisher.published)} to {args.channel!r}{first_last}",
    )
    return 0
