"""Managing the broker: users, channels, queues, subscriptions, the server's op list.

Each handler makes one call and prints its result: with `--json` the
object (or list of objects) the op returns, as protocol.md describes it,
`{}` for a deletion; otherwise a table or one sentence.

`channel rm` and `user rm` first ask on a terminal, saying what goes with
it (unless `--yes`). They look the channel or user up to say so, which also
reports `not_found` before anyone is asked; a channel is not asked about
when the caller may not delete it, so the answer is `forbidden` at once.
"""

from __future__ import annotations

import argparse

from ..models import ChannelInfo, QueueInfo, Right, UserInfo
from .exits import CliError
from .output import fields, seconds, table, when
from .prompts import ask_password, can_ask, confirm, password_from_stdin
from .runner import Context


def _user_rows(users: list[UserInfo]) -> str:
    return table(["NAME", "ROLE", "CREATED"], ([u.name, u.role, when(u.created_at)] for u in users))


def _channel_rows(channels: list[ChannelInfo]) -> str:
    return table(
        ["NAME", "OWNER", "PUBLISHED", "QUEUES", "ACCESS", "CREATED"],
        (
            [c.name, c.owner, str(c.published), str(c.queue_count), c.access, when(c.created_at)]
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


def _plural(count: int, noun: str) -> str:
    return f"1 {noun}" if count == 1 else f"{count} {noun}s"


async def _confirm_or_stop(args: argparse.Namespace, question: str) -> None:
    """Raises: CliError (exit 1) when the person at the terminal says no."""
    if not await confirm(question):
        raise CliError(f"{args.name!r} not deleted")


def _asks(args: argparse.Namespace) -> bool:
    return not args.yes and can_ask()


async def user_rm(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    if _asks(args):
        user = await client.user_get(args.name)
        await _confirm_or_stop(
            args,
            f"Delete user {user.name!r} ({user.role}) with all its queues and their messages, "
            "and end its connections?",
        )
    await client.user_delete(args.name)
    ctx.out.result({}, f"deleted user {args.name!r}")
    return 0


async def channel_add(ctx: Context, args: argparse.Namespace) -> int:
    channel = await (await ctx.session.client()).channel_create(args.name, args.access)
    ctx.out.result(channel, f"created channel {channel.name!r}")
    return 0


def _rights(args: argparse.Namespace) -> list[Right]:
    """The rights --publish and --subscribe name; neither means both."""
    chosen: list[Right] = []
    if args.publish:
        chosen.append("publish")
    if args.subscribe:
        chosen.append("subscribe")
    return chosen or ["publish", "subscribe"]


def _held(rights: list[Right]) -> str:
    return " and ".join(rights) if rights else "no rights"


async def channel_grant(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    rights = await client.channel_grant(args.name, args.grantee, _rights(args))
    ctx.out.result(
        {"rights": rights}, f"{args.grantee} now has {_held(rights)} on channel {args.name!r}"
    )
    return 0


async def channel_revoke(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    result = await client.channel_revoke(args.name, args.grantee, _rights(args))
    text = f"{args.grantee} now has {_held(result.rights)} on channel {args.name!r}"
    if result.queues_deleted:
        text += f"; deleted its {_plural(result.queues_deleted, 'queue')} there"
    ctx.out.result(result, text)
    return 0


async def channel_access(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    result = await client.channel_update(args.name, access=args.access)
    text = f"channel {args.name!r} is {result.access}"
    if result.granted:
        text += f"; granted subscribe to {', '.join(result.granted)} (they have queues on it)"
    ctx.out.result(result, text)
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
            ("access", channel.access),
            ("grants", _grant_list(channel.grants or {})),
            ("created", when(channel.created_at)),
            ("published", str(channel.published)),
            ("queues", str(channel.queue_count)),
        ]
    )
    queues = f"\n\n{_queue_rows(channel.queues)}" if channel.queues else ""
    ctx.out.result(channel, about + queues)
    return 0


def _grant_list(grants: dict[str, list[Right]]) -> str:
    """`alice (publish, subscribe), bob (subscribe)`, or `none`."""
    if not grants:
        return "none"
    return ", ".join(f"{user} ({', '.join(rights)})" for user, rights in grants.items())


async def channel_rm(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    if _asks(args):
        channel = await client.channel_get(args.name)
        me = ctx.session.identity
        if me is None or me.role == "admin" or me.user == channel.owner:
            await _confirm_or_stop(args, f"Delete {_channel_contents(channel)}?")
    await client.channel_delete(args.name)
    ctx.out.result({}, f"deleted channel {args.name!r}")
    return 0


def _channel_contents(channel: ChannelInfo) -> str:
    """`channel 'orders' with its 2 queues (billing, audit) and 5 messages`."""
    queues = channel.queues or []
    if not queues:
        return f"channel {channel.name!r} (it has no queues)"
    names = ", ".join(q.name for q in queues)
    held = sum(q.depth + q.inflight for q in queues)
    return (
        f"channel {channel.name!r} with its {_plural(len(queues), 'queue')} ({names}) "
        f"and the {_plural(held, 'message')} in them"
    )


async def subscribe(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    result = await client.subscribe(
        args.channel,
        args.queue,
        args.ack_timeout,
        overflow=args.overflow,
        max_messages=args.max_messages,
        max_bytes=args.max_bytes,
    )
    queue = result.queue
    what = "created queue" if result.created else "queue"
    exists = "" if result.created else " exists"
    about = [f"ack timeout {seconds(queue.ack_timeout)}"]
    # What differs from the usual (a queue on one's own channel), or was asked for.
    if queue.overflow not in (None, "reject") or args.overflow is not None:
        about.append(f"overflow {queue.overflow}")
    if args.max_messages is not None or args.max_bytes is not None:
        about.append(_limits(queue))
    ctx.out.result(
        result,
        f"{what} {queue.name!r} on channel {queue.channel!r}{exists} ({', '.join(about)})",
    )
    return 0


def _limits(queue: QueueInfo) -> str:
    return f"at most {queue.max_messages} messages, {queue.max_bytes} bytes"


async def queue_update(ctx: Context, args: argparse.Namespace) -> int:
    queue = await (await ctx.session.client()).queue_update(
        args.channel,
        args.queue,
        overflow=args.overflow,
        max_messages=args.max_messages,
        max_bytes=args.max_bytes,
    )
    ctx.out.result(
        queue,
        f"queue {queue.name!r} of channel {queue.channel!r}: overflow {queue.overflow}, "
        f"{_limits(queue)}",
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
