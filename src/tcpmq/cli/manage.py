"""Managing the broker: users, channels, queues, subscriptions, the server's op list.

Each handler makes one call and prints its result: with `--json` the
object (or list of objects) the op returns, as protocol.md describes it,
`{}` for a deletion; otherwise a table or one sentence.
"""

from __future__ import annotations

import argparse

from ..models import ChannelInfo, QueueInfo, UserInfo
from .output import fields, seconds, table, when
from .prompts import ask_password, password_from_stdin
from .runner import Context


def _user_rows(users: list[UserInfo]) -> str:
    return table(["NAME", "ROLE", "CREATED"], ([u.name, u.role, when(u.created_at)] for u in users))


def _channel_rows(channels: list[ChannelInfo]) -> str:
    return table(
        ["NAME", "OWNER", "PUBLISHED", "QUEUES", "CREATED"],
        (
            [c.name, c.owner, str(c.published), str(c.queue_count), when(c.created_at)]
            for c in channels
        ),
    )


def _queue_rows(queues: list[QueueInfo]) -> str:
    return table(
        ["QUEUE", "OWNER", "READY", "INFLIGHT", "ACK_TIMEOUT", "CREATED"],
        (
            [
                q.name,
                q.owner,
                str(q.depth),
                str(q.inflight),
                seconds(q.ack_timeout),
                when(q.created_at),
            ]
            for q in queues
        ),
    )


async def user_add(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "password_stdin", False):
        password = password_from_stdin()
    else:
        password = ask_password(f"Password for the new user {args.name}: ", confirm=True)
    client = await ctx.session.client()
    user = await client.user_create(args.name, password, args.role)
    ctx.out.result(user, f"created user {user.name!r} ({user.role})")
    return 0


async def user_list(ctx: Context, args: argparse.Namespace) -> int:
    users = await (await ctx.session.client()).user_list()
    ctx.out.result(users, _user_rows(users))
    return 0


async def user_get(ctx: Context, args: argparse.Namespace) -> int:
    user = await (await ctx.session.client()).user_get(args.name)
    ctx.out.result(
        user, fields([("name", user.name), ("role", user.role), ("created", when(user.created_at))])
    )
    return 0


async def user_rm(ctx: Context, args: argparse.Namespace) -> int:
    await (await ctx.session.client()).user_delete(args.name)
    ctx.out.result({}, f"deleted user {args.name!r}")
    return 0


async def channel_add(ctx: Context, args: argparse.Namespace) -> int:
    channel = await (await ctx.session.client()).channel_create(args.name)
    ctx.out.result(channel, f"created channel {channel.name!r}")
    return 0


async def channel_list(ctx: Context, args: argparse.Namespace) -> int:
    channels = await (await ctx.session.client()).channel_list()
    ctx.out.result(channels, _channel_rows(channels))
    return 0


async def channel_get(ctx: Context, args: argparse.Namespace) -> int:
    channel = await (await ctx.session.client()).channel_get(args.name)
    about = fields(
        [
            ("name", channel.name),
            ("owner", channel.owner),
            ("created", when(channel.created_at)),
            ("published", str(channel.published)),
            ("queues", str(channel.queue_count)),
        ]
    )
    queues = f"\n\n{_queue_rows(channel.queues)}" if channel.queues else ""
    ctx.out.result(channel, about + queues)
    return 0


async def channel_rm(ctx: Context, args: argparse.Namespace) -> int:
    await (await ctx.session.client()).channel_delete(args.name)
    ctx.out.result({}, f"deleted channel {args.name!r}")
    return 0


async def subscribe(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    result = await client.subscribe(args.channel, args.queue, args.ack_timeout)
    queue = result.queue
    what = "created queue" if result.created else "queue"
    exists = "" if result.created else " exists"
    ctx.out.result(
        result,
        f"{what} {queue.name!r} on channel {queue.channel!r}{exists} "
        f"(ack timeout {seconds(queue.ack_timeout)})",
    )
    return 0


async def queue_list(ctx: Context, args: argparse.Namespace) -> int:
    queues = await (await ctx.session.client()).queue_list(args.channel)
    ctx.out.result(queues, _queue_rows(queues))
    return 0


async def queue_rm(ctx: Context, args: argparse.Namespace) -> int:
    await (await ctx.session.client()).queue_delete(args.channel, args.queue)
    ctx.out.result({}, f"deleted queue {args.queue!r} of channel {args.channel!r}")
    return 0


async def info(ctx: Context, args: argparse.Namespace) -> int:
    about = await (await ctx.session.client()).info()
    rows = ([name, str(value)] for name, value in about.limits.items())
    text = f"{about.server} {about.version}, protocol {about.protocol}, store {about.store}\n"
    ctx.out.result(about, text + table(["LIMIT", "VALUE"], rows))
    return 0


async def ops(ctx: Context, args: argparse.Namespace) -> int:
    known = await (await ctx.session.client()).help()
    rows = ([o.op, o.fields, o.summary] for o in known)
    ctx.out.result(known, table(["OP", "FIELDS", "SUMMARY"], rows))
    return 0
