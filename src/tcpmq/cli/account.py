"""Who you are on a server: `login`, `logout`, `whoami`, and `ping` to see it answers."""

from __future__ import annotations

import argparse
import os
import time

from .credentials import StoredLogin
from .exits import UsageError
from .output import when
from .prompts import ask_password, password_from_stdin
from .runner import Context


async def login(ctx: Context, args: argparse.Namespace) -> int:
    session = ctx.session
    user: str | None = getattr(args, "user", None)
    if not user:
        raise UsageError("login needs --user NAME")
    if getattr(args, "password_stdin", False):
        password = password_from_stdin()
    else:
        password = os.environ.get("TCPMQ_PASSWORD") or ask_password(
            f"Password for {user} at {session.url}: "
        )
    client = await session.client(authenticate=False)
    result = await client.login(user, password, args.ttl)
    session.adopt(result)
    session.store.put(
        session.url, StoredLogin(user=result.user, token=result.token, expires_at=result.expires_at)
    )
    # The token itself is never printed: it is as good as the password until it expires.
    until = f" until {when(result.expires_at)}" if result.expires_at is not None else ""
    ctx.out.result(
        {
            "url": session.url,
            "user": result.user,
            "role": result.role,
            "expires_at": result.expires_at,
        },
        f"logged in to {session.url} as {result.user} ({result.role}){until}",
    )
    return 0


async def logout(ctx: Context, args: argparse.Namespace) -> int:
    url = ctx.session.url
    revoked = False
    if getattr(args, "revoke", False) and ctx.session.store.get(url) is not None:
        # With the stored token itself, before it is forgotten: the server then
        # refuses it, and every other token of the user issued so far.
        await (await ctx.session.client()).user_revoke_tokens()
        revoked = True
    removed = ctx.session.store.remove(url)
    text = f"removed the stored login for {url}" if removed else f"not logged in to {url}"
    if revoked:
        text += "; the server refuses every token of this user issued so far"
    ctx.out.result({"url": url, "removed": removed, "revoked": revoked}, text)
    return 0


async def whoami(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.session.client()
    identity = await client.whoami()
    ctx.out.result(
        {"url": ctx.session.url, "user": identity.user, "role": identity.role},
        f"{identity.user} ({identity.role}) at {ctx.session.url}",
    )
    return 0


async def ping(ctx: Context, args: argparse.Namespace) -> int:
    # ping needs no authentication, so no password is asked for.
    client = await ctx.session.client(authenticate=False)
    # Not loop.time(): uvloop caches it per iteration, to the millisecond.
    started = time.perf_counter()
    await client.ping()
    rtt_ms = (time.perf_counter() - started) * 1000
    info = client.server_info
    server = f"{info.get('server', '?')} {info.get('version', '?')}"
    ctx.out.result(
        {
            "url": ctx.session.url,
            "server": info.get("server"),
            "version": info.get("version"),
            "rtt_ms": round(rtt_ms, 3),
        },
        f"pong from {ctx.session.url} ({server}) in {rtt_ms:.2f} ms",
    )
    return 0
