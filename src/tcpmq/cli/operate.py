"""Operator views and account upkeep: queues across channels, purge, peek, passwords, tokens.

`queue list` without a channel shows every queue of every channel in one
request, with what an operator looks at first: how many messages wait, how
long the oldest has waited, how many came back for another try, how many
pulls are waiting. `queue purge` empties a queue's ready messages; `peek`
shows them without taking them. `passwd` and `revoke-tokens` end the tokens
issued so far; after changing your own password, a stored login for this
server is renewed with the new one, so later commands keep working.
"""

from __future__ import annotations

import argparse

from ..models import QueueInfo
from . import manage
from .credentials import StoredLogin
from .output import seconds, table
from .prompts import ask_password, password_from_stdin
from .pull import render
from .runner import Context


def age(value: float | None) -> str:
    """How long ago, to the second: `42s`, `3m07s`, `2h05m`, `4d03h`; `-` for none."""
    if value is None:
        return "-"
    whole = int(value)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _all_queue_rows(queues: list[QueueInfo]) -> str:
    return table(
        [
            "CHANNEL",
            "QUEUE",
            "OWNER",
            "READY",
            "INFLIGHT",
            "REDELIVERIES",
            "OLDEST",
            "CONSUMERS",
            "ACK_TIMEOUT",
        ],
        (
            [
                q.channel,
                q.name,
                q.owner,
                str(q.depth),
                str(q.inflight),
                str(q.redeliveries),
                age(q.oldest_age),
                str(q.consumers),
                seconds(q.ack_timeout),
            ]
            for q in queues
        ),
    )


async def queue_list(ctx: Context, args: argparse.Namespace) -> int:
    if args.channel is not None:
        return await manage.queue_list(ctx, args)
    queues = await (await ctx.session.client()).queue_list()
    ctx.out.result(queues, _all_queue_rows(queues) if queues else "no queues")
    return 0


async def queue_purge(ctx: Context, args: argparse.Namespace) -> int:
    purged = await (await ctx.session.client()).queue_purge(args.channel, args.queue)
    plural = "" if purged == 1 else "s"
    ctx.out.result(
        {"purged": purged},
        f"purged {purged} ready message{plural} of queue {args.queue!r} "
        f"of channel {args.channel!r}",
    )
    return 0


async def peek(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    messages = await client.peek(args.channel, args.queue, args.max or 1)
    for message in messages:
        ctx.out.text(render(message, ctx.out.json))
    return 0


async def passwd(ctx: Context, args: argparse.Namespace) -> int:
    session = ctx.session
    if getattr(args, "password_stdin", False):
        password = password_from_stdin()
    else:
        whose = f" for {args.name}" if args.name else ""
        password = ask_password(f"New password{whose}: ", confirm=True)
    client = await session.client()
    result = await client.user_passwd(password, args.name)
    me = session.identity.user if session.identity is not None else None
    name = args.name or me or "?"
    renewed = False
    stored = session.store.get(session.url)
    if name == me and stored is not None and stored.user == me:
        # The stored token was just revoked with the old password: log in again.
        login = await client.login(me, password)
        session.adopt(login)
        session.store.put(
            session.url,
            StoredLogin(user=login.user, token=login.token, expires_at=login.expires_at),
        )
        renewed = True
    text = f"changed the password of {name!r}; its tokens issued before now are refused"
    if renewed:
        text += f"\nrenewed the stored login for {session.url}"
    ctx.out.result(
        {"user": name, "tokens_valid_after": result.tokens_valid_after, "renewed": renewed}, text
    )
    return 0


async def revoke_tokens(ctx: Context, args: argparse.Namespace) -> int:
    session = ctx.session
    client = await session.client()
    result = await client.user_revoke_tokens(args.name)
    me = session.identity.user if session.identity is not None else None
    name = args.name or me or "?"
    text = f"revoked the tokens of {name!r} issued before now"
    stored = session.store.get(session.url)
    if name == me and stored is not None and stored.user == me:
        text += f"\nthe stored login for {session.url} is among them: run 'tcpmq login' again"
    ctx.out.result({"user": name, "tokens_valid_after": result.tokens_valid_after}, text)
    return 0
