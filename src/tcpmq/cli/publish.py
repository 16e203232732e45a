"""`tcpmq pub`: one message (DATA or a file), or a stream of them, one per line.

What a message is: DATA, the whole of `--file`, or each line with `--lines`
must be valid JSON and is sent as that JSON value; invalid JSON is a usage
error that says where, never quietly sent as something else (a newcomer's
`'{"order": 1,}'` is a typo, not a string). `--raw` is the one way to send
text as a JSON string. Without `--raw`, blank lines are skipped. Stdin
without `--file` is read as lines, provided its first line is JSON: a
pretty-printed document would otherwise become one message per line.

A message that reaches no queue (the publish reply says `queues: 0`) is
gone: nobody can ever pull it. `pub` warns, or with `--require-queue`
fails. It judges by the reply rather than asking `channel.get` first: the
reply says where the message went, a check before would race with `sub`
and `queue rm`, and what the server accepted into no queue holds nothing
to undo.

Theory of operation for a stream: a daemon thread reads the input in chunks
(a thread, because a regular file cannot be watched by the event loop, and
a blocking read in the loop would hold back replies and signals). The loop
splits each chunk into lines and sends them in batches of `--batch`
messages, also bounded in bytes by the server's `max_frame_bytes`. Up to
`WINDOW` batches are in flight at once, pipelined on the one connection, so
the server's replies and our sends overlap while memory stays bounded; the
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
from dataclasses import dataclass
from typing import Any

import orjson

from ..client import Client
from ..errors import TcpmqError
from ..models import PublishResult
from .exits import EXIT_USAGE, CliError, UsageError, describe
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
# Used when the server's greeting does not say (it always does).
FALLBACK_FRAME_BYTES = 1024 * 1024
# How much of a rejected DATA an error shows: enough to spot eaten quotes.
SHOWN_CHARS = 60


def messages(count: int, noun: str = "message") -> str:
    return f"1 {noun}" if count == 1 else f"{count} {noun}s"


class NotJson(Exception):
    """Text that was to be sent as JSON is not JSON; says what and where."""

    def __init__(self, error: orjson.JSONDecodeError) -> None:
        super().__init__(error.msg)
        self.reason = error.msg
        self.line = error.lineno
        self.column = error.colno


def message(text: bytes, raw: bool) -> Any:
    """The message `text` stands for: its JSON value, or with `raw` the text itself.

    Raises:
        NotJson: not `raw`, and `text` is not valid JSON.
        UnicodeDecodeError: `raw`, and `text` is not UTF-8.
    """
    if raw:
        return text.decode()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise NotJson(exc) from None


def _one(text: bytes, raw: bool, what: str, hint: str = "") -> Any:
    """The one message of DATA or a file, or a usage error naming `what`."""
    try:
        return message(text, raw)
    except NotJson as exc:
        raise UsageError(
            f"{what} is not valid JSON: {exc.reason} (line {exc.line}, column {exc.column}); "
            f"{hint}use --raw to send it as a string"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not UTF-8 text") from None


def _check_usage(ctx: Context, args: argparse.Namespace) -> None:
    if args.data is not None and args.file is not None:
        raise UsageError("give DATA or --file, not both")
    if args.data is not None and args.lines:
        raise UsageError("--lines reads stdin or --file, not DATA")
    if ctx.interactive and args.data is None and args.file in (None, "-"):
        # The shell's stdin is the terminal the commands come from.
        raise UsageError("in the shell, give the message: pub CHANNEL DATA, or --file FILE")


@dataclass
class _Tally:
    """What was published: the count, the ids, how many reached no queue."""

    channel: str
    published: int = 0
    first_id: int | None = None
    last_id: int | None = None
    unqueued: int = 0

    def count(self, result: PublishResult) -> None:
        self.published += len(result.message_ids)
        if result.message_ids:
            if self.first_id is None:
                self.first_id = result.message_ids[0]
            self.last_id = result.message_ids[-1]
        if result.queues == 0:
            self.unqueued += len(result.message_ids)

    def document(self) -> dict[str, Any]:
        """The `--json` result, the same for one message and for a stream."""
        return {
            "published": self.published,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "unqueued": self.unqueued,
        }

    def require_queue(self) -> None:
        """Raises: CliError when a message reached no queue (for `--require-queue`)."""
        if self.unqueued:
            raise CliError(
                f"channel {self.channel!r} has no queues: {self.lost()} accepted but "
                f"reached no queue; subscribe first ('tcpmq sub {self.channel}')"
            )

    def warn(self) -> None:
        if self.unqueued:
            print(
                f"tcpmq: warning: channel {self.channel!r} has no queues: {self.lost()} "
                f"accepted but reached no queue (subscribe with 'tcpmq sub {self.channel}')",
                file=sys.stderr,
                flush=True,
            )

    def lost(self) -> str:
        """Which messages reached no queue, as the subject of a sentence."""
        if self.published == 1:
            return f"message {self.first_id} was"
        if self.unqueued == self.published:
            return f"all {self.published} messages were"
        return f"{self.unqueued} of {self.published} messages were"


async def pub(ctx: Context, args: argparse.Namespace) -> int:
    _check_usage(ctx, args)
    if (args.file is None and args.data is None) or args.lines:
        return await _stream(ctx, args)
    if args.data is not None:
        # Shown as received: in sh, or in our shell which splits words the same
        # way, unquoted JSON arrives without its quotes.
        shown = args.data if len(args.data) <= SHOWN_CHARS else args.data[:SHOWN_CHARS] + "..."
        hint = "quote JSON as in sh (pub CHANNEL '{\"a\": 1}'), or " if ctx.interactive else ""
        data = _one(os.fsencode(args.data), args.raw, f"DATA {shown!r}", hint)
        client = await ctx.session.client()
    else:
        client = await ctx.session.client()
        data = await _whole(client, args)
    tally = _Tally(args.channel)
    result = await client.publish(args.channel, data)
    tally.count(result)
    if args.require_queue:
        tally.require_queue()
    queues = "1 queue" if result.queues == 1 else f"{result.queues} queues"
    ctx.out.result(
        tally.document(),
        f"published message {result.message_ids[0]} to {args.channel!r} ({queues})",
    )
    tally.warn()
    return 0


def _open_input(loop: asyncio.AbstractEventLoop, name: str | None) -> _Chunks:
    """Chunks of stdin for None or '-', else of the file opened (and closed when done)."""
    if name is None or name == "-":
        return _Chunks(loop, sys.stdin.fileno())
    return _Chunks(loop, os.open(name, os.O_RDONLY), owned=True)


async def _whole(client: Client, args: argparse.Namespace) -> Any:
    """The one message of `--file`, read up to what the server accepts in a frame."""
    limit = _frame_bytes(client)
    what = "stdin" if args.file == "-" else args.file
    chunks = _open_input(asyncio.get_running_loop(), args.file)
    if os.isatty(chunks.fd):
        print("reading one message from stdin; end with Ctrl-D", file=sys.stderr)
    try:
        parts: list[bytes] = []
        size = 0
        while chunk := await chunks.next():
            size += len(chunk)
            if size > limit:
                # Enforced while reading: a huge file is refused without holding it all.
                raise CliError(
                    f"{what} is larger than the server's max_frame_bytes ({limit:,} bytes)"
                )
            parts.append(chunk)
    finally:
        chunks.stop()
    return _one(b"".join(parts), args.raw, what)


def _frame_bytes(client: Client) -> int:
    max_frame = client.server_info.get("max_frame_bytes")
    return max_frame if isinstance(max_frame, int) else FALLBACK_FRAME_BYTES


class _Chunks:
    """Chunks of a file descriptor, read by a daemon thread; b"" at the end.

    An `owned` descriptor is closed by the thread when it is done, so it is
    never closed under a read in progress.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, owned: bool = False) -> None:
        self._loop = loop
        self.fd = fd
        self._owned = owned
        self._stopped = False
        self._chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._room = threading.Semaphore(READ_AHEAD)
        # A daemon: a thread blocked in read() must not keep the process alive after Ctrl-C.
        threading.Thread(target=self._run, name="tcpmq-input", daemon=True).start()

    def stop(self) -> None:
        """Read no more (the thread ends after the read in progress, if any)."""
        self._stopped = True
        self._room.release()

    def _run(self) -> None:
        try:
            self._read()
        finally:
            if self._owned:
                os.close(self.fd)

    def _read(self) -> None:
        while True:
            self._room.acquire()
            if self._stopped:
                return
            try:
                chunk: bytes | BaseException = os.read(self.fd, CHUNK_BYTES)
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
        self.batch_bytes = max(1, _frame_bytes(client) - ENVELOPE_BYTES - len(channel.encode()))
        self.batch: list[Any] = []
        self.size = 0
        self.in_flight: deque[asyncio.Future[PublishResult]] = deque()
        self.tally = _Tally(channel)

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
        self.tally.count(await self.in_flight.popleft())

    def reap(self) -> None:
        """Count the batches already answered, oldest first (for progress and interruptions)."""
        while self.in_flight and self.in_flight[0].done():
            future = self.in_flight[0]
            if future.cancelled() or future.exception() is not None:
                return  # _settle raises it in its turn
            self.in_flight.popleft()
            self.tally.count(future.result())

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
    """A rate line on stderr, rewritten in place, when stderr is a terminal.

    Not while the input is a terminal too: the carriage return would write
    over the line being typed. A line written is always ended: by the final
    count, or cleared before an error or interruption is reported.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, input_fd: int) -> None:
        self.loop = loop
        self.enabled = sys.stderr.isatty() and not os.isatty(input_fd)
        self.started = loop.time()
        self.shown_at = self.started
        self.open = False

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
        self.open = not final

    def clear(self) -> None:
        """Erase an unfinished line, so what is printed next starts at the margin."""
        if self.open:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.open = False


class _Lines:
    """Turns the lines of a stream into messages; the first decides if it is one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.raw: bool = args.raw
        # Without --lines or --raw, a first line that is not JSON means the
        # input is something else (one pretty-printed document, plain text).
        self.guessed = not args.lines and not args.raw
        self.source = "stdin" if args.file in (None, "-") else args.file
        self.number = 0
        self.seen_one = False

    def message(self, line: bytes) -> tuple[bool, Any]:
        """(False, None) for a line to skip, else (True, the message).

        Raises:
            CliError: the line is not valid JSON (exit 2) or not UTF-8.
        """
        self.number += 1
        line = line.removesuffix(b"\r")
        if not self.raw and not line.strip():
            return False, None
        try:
            value = message(line, self.raw)
        except UnicodeDecodeError:
            raise CliError(f"line {self.number} of {self.source} is not UTF-8 text") from None
        except NotJson as exc:
            where = f"line {self.number} of {self.source} is not valid JSON: {exc.reason} "
            where += f"(column {exc.column})"
            if self.guessed and not self.seen_one:
                hint = "use --file - to send stdin as one message, or --raw to send each line"
                raise CliError(f"{where}; {hint} as a string", EXIT_USAGE) from None
            raise CliError(f"{where}; use --raw to send lines as strings", EXIT_USAGE) from None
        self.seen_one = True
        return True, value


async def _stream(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    loop = asyncio.get_running_loop()
    chunks = _open_input(loop, args.file)
    try:
        return await _publish_lines(ctx, args, client, loop, chunks)
    finally:
        chunks.stop()


async def _publish_lines(
    ctx: Context,
    args: argparse.Namespace,
    client: Client,
    loop: asyncio.AbstractEventLoop,
    chunks: _Chunks,
) -> int:
    fd = chunks.fd
    if os.isatty(fd):
        print("reading messages from stdin, one per line; end with Ctrl-D", file=sys.stderr)
    publisher = _Publisher(client, args.channel, args.batch)
    tally = publisher.tally
    progress = _Progress(loop, fd)
    lines = _Lines(args)

    async def add(line: bytes) -> None:
        keep, value = lines.message(line)
        if keep:
            await publisher.add(value)

    try:
        rest = b""
        while chunk := await chunks.next():
            *complete, rest = (rest + chunk).split(b"\n")
            for line in complete:
                await add(line)
            # Send what this chunk completed: a slow producer's lines go out now.
            await publisher.send()
            publisher.reap()
            if args.require_queue:
                tally.require_queue()
            progress.show(tally.published)
        if rest:
            await add(rest)
        await publisher.finish()
        if args.require_queue:
            tally.require_queue()
    except asyncio.CancelledError:
        publisher.reap()
        progress.clear()
        print(
            f"tcpmq: interrupted; {messages(tally.published)} confirmed published",
            file=sys.stderr,
        )
        raise
    except (TcpmqError, TimeoutError, CliError, OSError) as exc:
        await publisher.abandon()
        progress.clear()
        code, reason = describe(exc, ctx.session.url)
        raise CliError(
            f"{reason} ({messages(tally.published)} published, {messages(lines.number, 'line')} "
            "read)",
            code,
        ) from None
    progress.show(tally.published, final=True)
    first_last = f" (ids {tally.first_id} to {tally.last_id})" if tally.published else ""
    ctx.out.result(
        tally.document(),
        f"published {messages(tally.published)} to {args.channel!r}{first_last}",
    )
    tally.warn()
    return 0
