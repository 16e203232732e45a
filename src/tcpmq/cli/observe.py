"""Watching and backing up a running broker: `stats`, `top`, `backup`.

`stats` prints the broker's `stats` op once: connections, message rates,
the store's disk use and fsync times, then every channel and queue. `top`
prints it again every `--interval` seconds, in place on a terminal (as
`watch` would), until Ctrl-C or `--count` frames; from its second frame
on its queue table also shows each queue's deliveries and acks per second,
from the counters of two frames. `backup DEST` has the broker write a
consistent copy of its data dir into DEST, on the broker's machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from ..models import BackupResult, Stats
from .operate import age
from .output import fields, table
from .runner import Context

#: Clear the screen and go home: each frame of `top` replaces the last one.
_CLEAR = "\x1b[H\x1b[2J"
#: How long `backup` waits for the broker's answer unless --timeout says otherwise
#: (the other commands' default, `COMMAND_TIMEOUT`, is too short for a large store).
BACKUP_TIMEOUT = 3600.0
COMMAND_TIMEOUT = 10.0


def size(value: int | None) -> str:
    """Bytes for people: `512 B`, `48.2 KiB`, `1.5 GiB`; `-` for unknown."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{value} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def per_second(value: float) -> str:
    return f"{value:,.0f}/s"


def milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def render(stats: Stats, previous: Stats | None = None, elapsed: float = 0.0) -> str:
    """One frame: the summary, the channels, the queues (with rates against `previous`)."""
    rates, totals, store = stats.rates, stats.totals, stats.store
    summary = [
        (
            "connections",
            f"{stats.connections['open']} open, {stats.connections['authenticated']} authenticated",
        ),
        (
            "messages",
            f"{per_second(rates['published'])} published, "
            f"{per_second(rates['delivered'])} delivered, {per_second(rates['acked'])} acked",
        ),
        (
            "since start",
            f"{totals['published']} published, {totals['delivered']} delivered, "
            f"{totals['acked']} acked",
        ),
    ]
    if store.disk_bytes is not None:
        state = "full: " + store.full if store.full else "writable"
        summary.append(
            (
                "store",
                f"{store.name}, {size(store.disk_bytes)} on disk, "
                f"{size(store.free_bytes)} free, {state}",
            )
        )
    else:
        summary.append(("store", f"{store.name}, nothing on disk"))
    if store.fsync is not None:
        sync = store.fsync
        summary.append(
            (
                "fsync",
                "no syncs yet"
                if sync.p50 is None
                else f"p50 {milliseconds(sync.p50)}, p99 {milliseconds(sync.p99)}, "
                f"max {milliseconds(sync.max)} (recent syncs)",
            )
        )
    parts = [fields(summary)]
    if stats.channels:
        parts.append(
            table(
                ["CHANNEL", "PUBLISHED", "QUEUES", "READY", "INFLIGHT"],
                (
                    [c.name, str(c.published), str(c.queue_count), str(c.depth), str(c.inflight)]
                    for c in stats.channels
                ),
            )
        )
    if stats.queues:
        parts.append(_queue_table(stats, previous, elapsed))
    return "\n\n".join(parts)


def _queue_table(stats: Stats, previous: Stats | None, elapsed: float) -> str:
    headers = ["CHANNEL", "QUEUE", "READY", "INFLIGHT", "CONSUMERS", "OLDEST", "LAG"]
    before = {}
    if previous is not None and elapsed > 0:
        headers += ["DELIVER/S", "ACK/S"]
        before = {(q.channel, q.name): q for q in previous.queues}
    else:
        headers += ["DELIVERED", "ACKED"]
    rows = []
    for q in stats.queues:
        row = [q.channel, q.name, str(q.depth), str(q.inflight), str(q.consumers)]
        row += [age(q.oldest_age), str(q.lag)]
        if previous is None or elapsed <= 0:
            row += [str(q.delivered), str(q.acked)]
        elif (old := before.get((q.channel, q.name))) is not None:
            row += [
                per_second(max(0, q.delivered - old.delivered) / elapsed),
                per_second(max(0, q.acked - old.acked) / elapsed),
            ]
        else:
            row += ["-", "-"]
        rows.append(row)
    return table(headers, rows)


async def stats(ctx: Context, args: argparse.Namespace) -> int:
    result = await (await ctx.session.client()).stats()
    ctx.out.result(result, render(result))
    return 0


async def top(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    # Ctrl-C is how top ends: it stops between frames and exits 0.
    ctx.cancel_on_signal = False
    in_place = not ctx.out.json and ctx.out.stream.isatty()
    previous: Stats | None = None
    previous_at = 0.0
    shown = 0
    while True:
        result = await client.stats()
        now = time.monotonic()
        if ctx.out.json:
            ctx.out.document(result)
        else:
            frame = render(result, previous, now - previous_at if previous else 0.0)
            if in_place:
                ctx.out.text(_CLEAR + frame)
            else:
                ctx.out.text(frame if shown == 0 else "\n" + frame)
        previous, previous_at = result, now
        shown += 1
        if args.count is not None and shown >= args.count:
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), args.interval)
        if ctx.stop.is_set():
            return 0


async def backup(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    if (
        getattr(args, "timeout", COMMAND_TIMEOUT) == COMMAND_TIMEOUT
    ):  # not raised by --timeout: a backup takes longer
        client.timeout = BACKUP_TIMEOUT
    result: BackupResult = await client.backup(args.dest)
    ctx.out.result(
        result,
        f"backed up {result.channels} channels and {result.queues} queues into "
        f"{result.path} ({size(result.bytes)} in {result.seconds:.2f} s)",
    )
    return 0
