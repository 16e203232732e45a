"""Running one command against the server: signals, errors, the event loop.

`execute()` runs a command's handler and turns whatever it raises into an
exit code and one line on stderr (see `exits`). While it runs, SIGINT and
SIGTERM are handled with `loop.add_signal_handler`, so a signal never lands
in the middle of the loop's own code: it sets `Context.stop`, and unless
the command watches `stop` itself (`pull` does, to finish printing and
acking what it holds), cancels the command, which then exits 130. A second
signal cancels any command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, failure
from .output import Output
from .session import Session

Handler = Callable[["Context", argparse.Namespace], Awaitable[int | None]]
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Context:
    """What a command handler works with."""

    session: Session
    out: Output
    #: True inside `tcpmq shell`.
    interactive: bool = False
    #: Set by SIGINT or SIGTERM.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether a signal also cancels the handler; `pull` turns this off and watches `stop`.
    cancel_on_signal: bool = True


def new_runner() -> asyncio.Runner:
    """An event loop runner, on uvloop where it is installed (as the broker is)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def execute(ctx: Context, args: argparse.Namespace) -> int:
    """Run the handler `args` names; return its exit code, having reported any failure."""
    handler: Handler = args.handler
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    ctx.stop.clear()
    ctx.cancel_on_signal = True
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        # A second signal ends even a command that watches `stop` (an ack that hangs).
        if ctx.cancel_on_signal or ctx.stop.is_set():
            task.cancel()
        interrupted = True
        ctx.stop.set()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal)
    try:
        return await handler(ctx, args) or EXIT_OK
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        return failure(exc, ctx.session.url)
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
        if interrupted and sys.stderr.isatty():
            # The terminal echoed ^C; the next prompt goes on a line of its own.
            print(file=sys.stderr)
        if not ctx.interactive:
            # Closing only fails when the connection is gone already.
            with contextlib.suppress(Exception):
                await ctx.session.close()


def silence_stdout() -> None:
    """Point stdout at /dev/null after a broken pipe.

    Otherwise Python's final flush at exit fails on the same pipe and prints
    a traceback-like complaint on stderr.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def run_command(args: argparse.Namespace) -> int:
    """Run one command against the server on a loop of its own (the command line)."""
    session = Session.from_args(args)
    with new_runner() as runner:
        ctx = Context(session, Output(json=args.json))
        return runner.run(execute(ctx, args))
