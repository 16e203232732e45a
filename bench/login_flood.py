"""Logins under attack: timing, a login flood, and S1 while logins arrive.

    python -m bench.login_flood                 # all three parts, the defaults below
    python -m bench.login_flood --only flood --sockets 600 --logins 30 --reopen 9 --seconds 40

Every part starts its own `tcpmq serve` (pinned to core 0, as bench/run does;
this process keeps core 1), on loopback only, and stops on its own: every loop
is bounded in count and in time.

- timing: `--timing` logins for an unknown user and as many with a wrong
  password for an existing one, interleaved on one connection, each timed
  from request to reply; prints both medians and their difference. The
  server runs with the failed-login limits raised out of the way (this
  measures the hash path, not the limits).
- flood: `--sockets` connections, each pipelining `--logins` wrong logins
  for invented users (no account), reading what comes back, closed and
  opened again every `--reopen` seconds, from `--flood-addresses` loopback
  addresses (127.0.1.1 on; 1 is one attacker). Meanwhile a legitimate user
  logs in from 127.0.0.2 every `--legit-every` seconds, retrying a refusal
  (`limit_exceeded`) after its `retry_after` (else 0.2 s) for up to 10 s.
  Prints how many of the legitimate logins succeeded, their latency and
  tries, and what the flood got
  back (hashed and refused, `auth_failed` and `limit_exceeded`). Default
  server limits.
- s1: bench S1 (one publisher, one consumer, deliveries/s), alone and then
  while `--login-rate` correct logins a second arrive from 127.0.0.3 (each
  on its own connection, every login answered before the next one goes on
  that connection); prints both rates and the logins served.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import uvloop

from .peers import peer_for
from .scenarios import Sizes, s1
from .servers import PASSWORD, SPECS, Server

USER = "alice"
USER_PASSWORD = "alice-password-123"
WRONG = "wrong-password-123"
LEGIT_ADDRESS = "127.0.0.2"
S1_LOGIN_ADDRESS = "127.0.0.3"
REPLY_TIMEOUT = 60.0
LEGIT_PATIENCE = 10.0  # seconds a legitimate client keeps retrying a refused login
perf = time.perf_counter


class TunedServer(Server):
    """A tcpmq server started with extra `tcpmq serve` flags."""

    def __init__(self, data_dir: Path, flags: list[str]) -> None:
        super().__init__(SPECS["tcpmq"], data_dir)
        self.flags = flags

    def _command(self, node: int = 0) -> tuple[list[str], re.Pattern[bytes], dict[str, str]]:
        command, ready, env = super()._command(node)
        return [*command, *self.flags], ready, env


class Line:
    """One raw connection: JSON lines out, JSON lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, address: str = "127.0.0.1") -> Line:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        line = cls(reader, writer)
        await line.recv()  # hello
        return line

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        if not raw:
            raise ConnectionError("closed")
        reply: dict[str, Any] = orjson.loads(raw)
        return reply

    async def call(self, **request: Any) -> dict[str, Any]:
        self.writer.write(orjson.dumps(request) + b"\n")
        return await self.recv()

    def close(self) -> None:
        self.writer.close()


async def started(flags: list[str]) -> TunedServer:
    server = TunedServer(Path(tempfile.mkdtemp(prefix="tcpmq-login-bench-")), flags)
    await server.start()
    admin = await Line.open(server.port)
    try:
        await admin.call(op="login", user="admin", password=PASSWORD)
        reply = await admin.call(op="user.create", name=USER, password=USER_PASSWORD)
        assert reply["ok"], reply
    finally:
        admin.close()
    return server


# -- timing ---------------------------------------------------------------------


async def timing(count: int) -> None:
    # Limits out of the way: this measures what a login costs, not the limits.
    unlimited = "1000000"
    server = await started(
        [
            *("--login-failure-burst", unlimited),
            *("--login-failures-per-address", unlimited),
            *("--login-failures-per-user", unlimited),
        ]
    )
    try:
        line = await Line.open(server.port)
        unknown: list[float] = []
        wrong: list[float] = []
        for i in range(count):
            # Interleaved, so drift in the machine touches both alike.
            for times, user in ((unknown, f"nobody{i}"), (wrong, USER)):
                began = perf()
                reply = await line.call(op="login", user=user, password=WRONG)
                times.append(perf() - began)
                assert reply["error"]["code"] == "auth_failed", reply
        line.close()
    finally:
        await server.stop()
    a, b = statistics.median(unknown), statistics.median(wrong)
    print(f"timing: {count} logins each, over the socket")
    print(f"  unknown user:   median {a * 1000:.2f} ms")
    print(f"  wrong password: median {b * 1000:.2f} ms")
    print(f"  difference: {abs(a - b) / b * 100:.1f} % of the wrong-password median")


# -- flood ----------------------------------------------------------------------


async def flood_socket(
    port: int, address: str, index: int, logins: int, reopen: float, until: float, got: Counter[str]
) -> None:
    """One flood socket: pipeline wrong logins, read the replies, reopen every `reopen` s."""
    round_ = 0
    while perf() < until:
        opened = perf()
        try:
            line = await Line.open(port, address)
        except (OSError, TimeoutError):
            got["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            requests = b"".join(
                orjson.dumps(
                    {"op": "login", "user": f"ghost{index}x{round_}x{n}", "password": WRONG}
                )
                + b"\n"
                for n in range(logins)
            )
            line.writer.write(requests)
            deadline = min(opened + reopen, until)
            for _ in range(logins):
                left = deadline - perf()
                if left <= 0:
                    break
                raw = await asyncio.wait_for(line.reader.readline(), left)
                if not raw:
                    break
                reply = orjson.loads(raw)
                got[reply["error"]["code"] if not reply.get("ok") else "ok"] += 1
        except (TimeoutError, OSError):
            pass
        finally:
            line.close()
        round_ += 1
        await asyncio.sleep(max(0.0, opened + reopen - perf()))


async def legit_login(port: int) -> tuple[bool, int]:
    """Log in as a client would: on `limit_exceeded`, retry after `retry_after`
    (or 0.2 s), for up to LEGIT_PATIENCE seconds. Returns (success, tries)."""
    give_up = perf() + LEGIT_PATIENCE
    tries = 0
    while True:
        tries += 1
        line = await Line.open(port, LEGIT_ADDRESS)
        try:
            reply = await line.call(op="login", user=USER, password=USER_PASSWORD)
        finally:
            line.close()
        if reply.get("ok"):
            return True, tries
        error = reply["error"]
        wait = float(error.get("retry_after", 0.2))
        if error["code"] != "limit_exceeded" or perf() + wait > give_up:
            print(f"  legitimate login refused after {tries} tries: {error}")
            return False, tries
        await asyncio.sleep(wait)


async def legit_logins(port: int, every: float, until: float) -> list[tuple[float, int] | None]:
    """A login every `every` seconds (the first after half of that); each one's
    latency and tries, or None for a failure."""
    results: list[tuple[float, int] | None] = []
    due = perf() + every / 2  # at 5, 15, 25, 35 s of a 40 s flood, by default
    while due < until:
        await asyncio.sleep(max(0.0, due - perf()))
        due += every
        began = perf()
        try:
            ok, tries = await legit_login(port)
            results.append((perf() - began, tries) if ok else None)
        except (OSError, TimeoutError) as exc:
            print(f"  legitimate login failed: {exc!r}")
            results.append(None)
    return results


async def flood(args: argparse.Namespace) -> None:
    server = await started([])
    got: Counter[str] = Counter()
    try:
        until = perf() + args.seconds
        sockets = [
            flood_socket(
                server.port,
                f"127.0.1.{1 + i % args.flood_addresses}",
                i,
                args.logins,
                args.reopen,
                until,
                got,
            )
            for i in range(args.sockets)
        ]
        cpu = server.cpu()
        legit, *_ = await asyncio.wait_for(
            asyncio.gather(legit_logins(server.port, args.legit_every, until), *sockets),
            args.seconds + REPLY_TIMEOUT,
        )
        cpu = server.cpu() - cpu
    finally:
        await server.stop()
    served = [result for result in legit if result is not None]
    print(
        f"flood: {args.sockets} sockets x {args.logins} wrong logins, reopened every "
        f"{args.reopen:g} s, from {args.flood_addresses} address(es), for {args.seconds:g} s"
    )
    print(f"  legitimate logins: {len(served)} of {len(legit)} succeeded")
    if served:
        print(
            "  their latency (tries): "
            + ", ".join(f"{t * 1000:.0f} ms ({tries})" for t, tries in served)
            + f"; median {statistics.median(t for t, _ in served) * 1000:.0f} ms"
        )
    print(f"  flood replies: {dict(got)}; server CPU {cpu / args.seconds:.2f} cores")


# -- S1 while logins arrive ---------------------------------------------------------


async def login_load(port: int, rate: float, until: float, got: Counter[str]) -> None:
    """`rate` correct logins a second, each connection taking its turn on a schedule."""
    connections = max(1, int(rate // 10))  # each paced at about 10 a second
    interval = connections / rate

    async def one(offset: float) -> None:
        line = await Line.open(port, S1_LOGIN_ADDRESS)
        try:
            due = perf() + offset
            while due < until:
                await asyncio.sleep(max(0.0, due - perf()))
                reply = await line.call(op="login", user=USER, password=USER_PASSWORD)
                got["ok" if reply.get("ok") else reply["error"].get("limit", "error")] += 1
                due += interval
        finally:
            line.close()

    await asyncio.gather(*(one(i * interval / connections) for i in range(connections)))


async def s1_with_logins(args: argparse.Namespace) -> None:
    sizes = Sizes(s1_messages=args.s1_messages)
    results: dict[str, float] = {}
    got: Counter[str] = Counter()
    for label, rate in (("alone", 0.0), ("with logins", args.login_rate)):
        server = await started([])
        try:
            peer = peer_for(server)
            load: asyncio.Task[None] | None = None
            if rate:
                load = asyncio.ensure_future(login_load(server.port, rate, perf() + 600.0, got))
                await asyncio.sleep(1.0)  # the login load reaches its pace first
            began = perf()
            figures = await asyncio.wait_for(s1(server, peer, sizes), 300.0)
            elapsed = perf() - began
            if load is not None:
                load.cancel()
                served = got["ok"]
                print(f"  logins during S1: {dict(got)} ({served / (elapsed + 1.0):.0f} ok/s)")
            results[label] = figures["rate"]
        finally:
            await server.stop()
    print(f"s1: {args.s1_messages} messages, 1 publisher -> 1 consumer")
    for label, rate in results.items():
        print(f"  {label}: {rate:,.0f} deliveries/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__)
    parser.add_argument("--only", choices=["timing", "flood", "s1"], default=None)
    parser.add_argument("--timing", type=int, default=200, help="logins of each kind (200)")
    parser.add_argument("--sockets", type=int, default=600)
    parser.add_argument("--logins", type=int, default=30, help="wrong logins per socket")
    parser.add_argument("--reopen", type=float, default=9.0, help="seconds between reopens")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the flood runs")
    parser.add_argument("--flood-addresses", type=int, default=1, help="127.0.1.1 on (max 250)")
    parser.add_argument("--legit-every", type=float, default=10.0)
    parser.add_argument("--s1-messages", type=int, default=200_000)
    parser.add_argument("--login-rate", type=float, default=200.0, help="logins/s during S1")
    args = parser.parse_args()
    if not 1 <= args.flood_addresses <= 250:
        parser.error("--flood-addresses: 1 to 250")
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})  # the server has core 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    async def run() -> None:
        if args.only in (None, "timing"):
            await timing(args.timing)
        if args.only in (None, "flood"):
            await flood(args)
        if args.only in (None, "s1"):
            await s1_with_logins(args)

    uvloop.run(run())


if __name__ == "__main__":
    main()
