"""`tcpmq pull` (once, or `--follow`), and `ack`/`nack` for messages pulled with `--no-ack`.

A message is acked only once it has been printed: written to stdout and
flushed. What `tcpmq` cannot see is whether the reader of a pipe read it
(`tcpmq pull q --max 10 | head -1` acks all ten). An empty pull prints
nothing, except "no messages" when stdout is a terminal.

`--follow` and Ctrl-C. The SIGINT (and SIGTERM) handler only sets
`Context.stop` (see `runner`); the loop looks at it between steps, so the
printing and acking of a batch is never cut in half:

- a batch being printed is printed whole and acked, then the loop ends;
- a batch pulled but not printed yet (the signal came while its reply was
  on the way) is nacked: back in the queue at once, ahead of later messages;
- a long-poll still waiting is abandoned at once. If the server handed out
  messages in that very moment, they stay in flight and come back after the
  queue's ack timeout.

To keep that last case to a long-poll on an empty queue, the loop pulls
without waiting while messages keep coming (such a reply is always awaited,
even after Ctrl-C), and long-polls only after a pull found the queue empty.
Printed messages are acked before the next pull goes out, in one call per
batch.

`--follow` outlives the server: when the connection is lost it says so on
stderr, connects again with the client library's backoff (until it works or
Ctrl-C) and goes on. Messages pulled on the lost connection come back after
the queue's ack timeout; a batch printed whose ack was lost may be printed
again (delivery is at least once). Only a refusal of the credentials (the
user deleted, the token expired) ends it, with exit code 4.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Awaitable
from typing import TypeVar

import orjson

from ..client import Backoff, Client, ConnectionClosed
from ..errors import ErrorCode
from ..models import Message
from .exits import EXIT_CONNECTION, EXIT_INTERRUPTED, CliError, UsageError
from .output import compact, plain
from .runner import Context

FOLLOW_BATCH = 100
FOLLOW_WAIT = 30.0
#: How `--follow` spaces its attempts to connect again: the library's default.
FOLLOW_BACKOFF = Backoff()

_T = TypeVar("_T")


def render(message: Message, json: bool) -> str:
    """One line for a message: its JSON object, or `ID  DATA` for people."""
    if json:
        return orjson.dumps(plain(message)).decode()
    attempt = f"  (attempt {message.attempt})" if message.attempt > 1 else ""
    return f"{message.id}  {compact(message.data)}{attempt}"


class _Puller:
    def __init__(self, ctx: Context, client: Client, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.client = client
        self.channel: str = args.channel
        self.queue: str | None = args.queue
        self.ack = not args.no_ack
        self.max: int = args.max or (FOLLOW_BATCH if args.follow else 1)

    async def pull(self, wait: float) -> list[Message] | None:
        """The next batch, or None when a signal came while the long-poll waited."""
        call = asyncio.ensure_future(self.client.pull(self.channel, self.queue, self.max, wait))
        if wait == 0:
            # Answered at once: await it even after a signal, and nack what it brings.
            return await call
        stopped = asyncio.ensure_future(self.ctx.stop.wait())
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if call.done():
            return call.result()
        # Anything the server hands out now stays in flight until its ack timeout.
        call.cancel()
        return None

    async def deliver(self, messages: list[Message]) -> None:
        """Print the batch, then ack it; nack it if it could not be printed."""
        if not messages:
            return
        stream = self.ctx.out.stream
        text = "".join(render(m, self.ctx.out.json) + "\n" for m in messages)
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            await self.give_back(messages)
            raise
        if self.ack:
            await self.client.ack(self.channel, [m.id for m in messages], self.queue)

    async def give_back(self, messages: list[Message]) -> None:
        """Return messages nobody saw to the queue (with --no-ack too)."""
        if messages:
            await self.client.nack(self.channel, [m.id for m in messages], self.queue)


async def pull(ctx: Context, args: argparse.Namespace) -> int:
    if args.follow and args.no_ack:
        raise UsageError("--follow acks what it prints; it cannot be used with --no-ack")
    if args.follow and args.wait == 0:
        raise UsageError("--follow needs a --wait above 0")
    client = await ctx.session.client()
    # From here a signal only sets ctx.stop; the steps below check it.
    ctx.cancel_on_signal = False
    if ctx.stop.is_set():
        return EXIT_INTERRUPTED
    puller = _Puller(ctx, client, args)
    if args.follow:
        return await _follow(ctx, puller, FOLLOW_WAIT if args.wait is None else args.wait)
    messages = await puller.pull(args.wait or 0.0)
    if messages is None:
        return EXIT_INTERRUPTED
    if ctx.stop.is_set():
        await puller.give_back(messages)
        return EXIT_INTERRUPTED
    if not messages and not ctx.out.json and ctx.out.stream.isatty():
        # A person would wonder whether anything happened; a script wants no output.
        ctx.out.text("no messages")
    await puller.deliver(messages)
    return 0


async def _follow(ctx: Context, puller: _Puller, wait: float) -> int:
    # Start without waiting: a backlog is taken at once; see the module docstring.
    next_wait = 0.0
    while not ctx.stop.is_set():
        try:
            messages = await puller.pull(next_wait)
            if messages is None:
                break
            if ctx.stop.is_set():
                await puller.give_back(messages)
                break
            if not messages:
                next_wait = wait
                continue
            await puller.deliver(messages)
            next_wait = 0.0
        except ConnectionClosed as lost:
            if lost.code == ErrorCode.AUTH_FAILED:
                raise  # the user was deleted: connecting again cannot help
            client = await _reconnect(ctx, lost)
            if client is None:
                break
            puller.client = client
            next_wait = 0.0
    # Ctrl-C is how --follow is meant to end.
    return 0


async def _reconnect(ctx: Context, lost: ConnectionClosed) -> Client | None:
    """A new authenticated client after `lost`, with backoff; None if a signal came first."""
    print(f"tcpmq: {lost.message}; connecting again", file=sys.stderr, flush=True)
    await ctx.session.close()
    attempt = 0
    while True:
        attempt += 1
        delay = FOLLOW_BACKOFF.delay(attempt, random.random())
        if await _unless_stopped(ctx, asyncio.sleep(delay, "slept")) is None:
            return None
        try:
            client = await _unless_stopped(ctx, ctx.session.client())
        except CliError as exc:
            if exc.code != EXIT_CONNECTION:
                raise  # credentials refused: exit 4, as any command would
            continue
        except ConnectionClosed as exc:
            if exc.code == ErrorCode.AUTH_FAILED:
                raise
            await ctx.session.close()  # a bye before or after the greeting
            continue
        if client is not None:
            print("tcpmq: connected again", file=sys.stderr, flush=True)
        return client


async def _unless_stopped(ctx: Context, step: Awaitable[_T]) -> _T | None:
    """`step`'s result, or None (the step cancelled) when Ctrl-C comes first."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(ctx.stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def ack(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    result = await client.ack(args.channel, args.ids, args.queue)
    unknown = f"; not in flight: {' '.join(map(str, result.unknown))}" if result.unknown else ""
    ctx.out.result(result, f"acked {result.acked}{unknown}")
    return 0


async def nack(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    result = await client.nack(args.channel, args.ids, args.queue)
    unknown = f"; not in flight: {' '.join(map(str, result.unknown))}" if result.unknown else ""
    ctx.out.result(result, f"returned {result.requeued} to the queue{unknown}")
    return 0
