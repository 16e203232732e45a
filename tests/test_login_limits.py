"""Failed `auth`/`login` attempts are limited per source address and per user name.

The buckets themselves are tested with the time passed in; the server's use
of them over real sockets, from several loopback addresses (127.0.0.0/8 is
all loopback), and a login flood from connections that close before their
hashes run.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import orjson
import pytest

from conftest import (
    ADMIN_PASSWORD,
    REPLY_TIMEOUT,
    USER_PASSWORD,
    Wire,
    create_user,
    open_user_wire,
    running_server,
)
from tcpmq.config import Limits
from tcpmq.loginlimits import LoginLimiter, TokenBuckets, source_address
from tcpmq.server import Server

# -- the buckets, with time passed in -------------------------------------------


def test_a_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate=5.0, burst=3, max_keys=10)
    for _ in range(3):
        assert buckets.wait("a", 100.0) == 0
        buckets.take("a", 100.0)
    assert buckets.wait("a", 100.0) == pytest.approx(0.2)
    assert buckets.wait("a", 100.1) == pytest.approx(0.1)
    assert buckets.wait("a", 100.2) == 0
    assert buckets.wait("b", 100.0) == 0  # keys do not share


def test_a_refilled_bucket_is_forgotten() -> None:
    buckets = TokenBuckets(rate=5.0, burst=3, max_keys=10)
    buckets.take("a", 0.0)
    assert len(buckets) == 1
    assert buckets.wait("a", 0.2) == 0  # back to 3 tokens: the same as no bucket
    assert len(buckets) == 0
    buckets.take("a", 1.0)
    buckets.give_back("a", 1.0)
    assert len(buckets) == 0


def test_the_tables_are_bounded_least_recently_used_first() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=3)
    for key in ("a", "b", "c"):
        buckets.take(key, 0.0)
        buckets.take(key, 0.0)
    buckets.wait("a", 0.0)  # "a" used again: "b" is now the oldest
    buckets.take("d", 0.0)
    assert len(buckets) == 3
    assert buckets.wait("b", 0.0) == 0  # forgotten
    assert buckets.wait("a", 0.0) > 0 and buckets.wait("c", 0.0) > 0


def test_the_limiter_names_the_empty_bucket_and_when_to_retry() -> None:
    limiter = LoginLimiter(
        Limits(login_failures_per_address=4.0, login_failures_per_user=2.0, login_failure_burst=1)
    )
    limiter.take("10.0.0.1", "alice", 0.0)
    with pytest.raises(Exception) as by_address:
        limiter.check("10.0.0.1", "bob", 0.0)
    assert by_address.value.to_wire() == {  # type: ignore[attr-defined]
        "code": "limit_exceeded",
        "message": "too many failed authentication attempts; retry in 0.25 s",
        "limit": "login_failures_per_address",
        "max": 4.0,
        "retry_after": 0.25,
    }
    with pytest.raises(Exception) as by_user:
        limiter.check("10.0.0.2", "alice", 0.1)
    assert by_user.value.to_wire()["limit"] == "login_failures_per_user"  # type: ignore[attr-defined]
    assert by_user.value.to_wire()["retry_after"] == 0.4  # type: ignore[attr-defined]
    limiter.check("10.0.0.2", "bob", 0.0)


def test_addresses_are_trusted_for_a_time_and_the_table_is_bounded() -> None:
    limiter = LoginLimiter(Limits(login_trust_seconds=60.0, login_limit_entries=2))
    assert not limiter.trusted("a", 0.0)
    limiter.succeeded("a", 0.0)
    assert limiter.trusted("a", 60.0)
    assert not limiter.trusted("a", 60.5)  # expired, and forgotten
    limiter.succeeded("a", 100.0)
    limiter.succeeded("b", 100.0)
    limiter.succeeded("a", 101.0)  # used again: "b" is the oldest now
    limiter.succeeded("c", 102.0)
    assert limiter.trusted("a", 103.0) and limiter.trusted("c", 103.0)
    assert not limiter.trusted("b", 103.0)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/tcpmq.sock", "/run/tcpmq.sock"),
    ],
)
def test_source_addresses(host: str, key: str) -> None:
    assert source_address(host) == key


# -- over the socket ----------------------------------------------------------


@asynccontextmanager
async def wire_from(server: Server, address: str) -> AsyncIterator[Wire]:
    """A raw connection from the loopback `address` (any of 127.0.0.0/8)."""
    reader, writer = await asyncio.open_connection(
        server.host, server.port, local_addr=(address, 0)
    )
    wire = Wire(reader, writer)
    try:
        wire.hello = await wire.recv()
        yield wire
    finally:
        await wire.close()


async def test_failed_logins_from_an_address_are_limited_before_any_hash(
    tmp_path: Path,
) -> None:
    async with (
        running_server(
            tmp_path / "data", login_failure_burst=3, login_failures_per_address=0.5
        ) as srv,
        wire_from(srv, "127.0.0.2") as wire,
    ):
        for name in ("admin", "nobody", "ghost"):
            await wire.error("login", "auth_failed", user=name, password="wrong-password")
        started = srv.passwords.started
        error = await wire.error("login", "limit_exceeded", user="admin", password=ADMIN_PASSWORD)
        assert error["limit"] == "login_failures_per_address"
        assert error["max"] == 0.5
        assert 0 < error["retry_after"] <= 2.0
        # Refused before the hash: even the right password was not tried.
        assert srv.passwords.started == started
        # Loopback is not exempt, but another address is another bucket.
        async with wire_from(srv, "127.0.0.3") as other:
            await other.ok("login", user="admin", password=ADMIN_PASSWORD)


async def test_failed_logins_for_a_user_are_limited_from_any_address(tmp_path: Path) -> None:
    async with running_server(
        tmp_path / "data", login_failure_burst=2, login_failures_per_user=0.5
    ) as srv:
        for address in ("127.0.0.2", "127.0.0.3"):
            async with wire_from(srv, address) as wire:
                await wire.error("login", "auth_failed", user="admin", password="wrong-password")
        async with wire_from(srv, "127.0.0.4") as wire:
            error = await wire.error("login", "limit_exceeded", user="admin", password="x" * 8)
            assert error["limit"] == "login_failures_per_user"
            assert error["retry_after"] > 0
            # User names never created have buckets too, their own.
            await wire.error("login", "auth_failed", user="nobody", password="wrong-password")


async def test_successful_logins_cost_nothing(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", login_failure_burst=2) as srv,
        wire_from(srv, "127.0.0.2") as wire,
    ):
        for _ in range(6):
            await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
        # The whole burst is still there for mistakes.
        for _ in range(2):
            await wire.error("login", "auth_failed", user="admin", password="wrong-password")
        await wire.error("login", "limit_exceeded", user="admin", password="wrong-password")


async def test_failed_token_auths_are_limited_but_a_good_token_still_works(
    tmp_path: Path,
) -> None:
    async with running_server(
        tmp_path / "data", login_failure_burst=3, login_failures_per_address=0.5
    ) as srv:
        async with wire_from(srv, "127.0.0.2") as wire:
            for _ in range(3):
                await wire.error("auth", "auth_failed", token="not.a.token")
            error = await wire.error("auth", "limit_exceeded", token="not.a.token")
            assert error["limit"] == "login_failures_per_address"
            assert error["retry_after"] > 0
            # A valid token costs microseconds to check: it is not refused.
            assert (await wire.ok("auth", token=srv.mint_token("admin")))["user"] == "admin"
        async with wire_from(srv, "127.0.0.2") as wire:
            # The address is limited for passwords, though.
            await wire.error("login", "limit_exceeded", user="admin", password=ADMIN_PASSWORD)


async def test_a_full_address_queue_refuses_at_once(tmp_path: Path) -> None:
    async with running_server(
        tmp_path / "data", max_concurrent_logins=1, max_queued_logins_per_address=1
    ) as srv:
        async with AsyncExitStack() as stack:
            wires = [await stack.enter_async_context(wire_from(srv, "127.0.0.2")) for _ in range(3)]
            # All three arrive in one turn of the loop: one hashes, one waits,
            # the third finds the address's queue full.
            line = orjson.dumps({"op": "login", "user": "admin", "password": "wrong-password"})
            for wire in wires:
                wire.writer.write(line + b"\n")
            replies = [await wire.recv() for wire in wires]
        codes = [reply["error"]["code"] for reply in replies]
        assert codes == ["auth_failed", "auth_failed", "limit_exceeded"], replies
        assert replies[2]["error"]["limit"] == "max_queued_logins_per_address"
        assert replies[2]["error"]["max"] == 1


FLOOD_ADDRESSES = 20
FLOOD_LOGINS = 5


async def flood(
    server: Server, stack: AsyncExitStack, queued: int = 0, logins: int = FLOOD_LOGINS
) -> list[Wire]:
    """Connections from many addresses (so no rate limit stops them), each with
    wrong logins for invented users pipelined; returns once `queued` hashes
    wait (default: one from each connection but the one hashing)."""
    wires = [
        await stack.enter_async_context(wire_from(server, f"127.0.1.{i + 1}"))
        for i in range(FLOOD_ADDRESSES)
    ]
    for i, wire in enumerate(wires):
        requests = (
            orjson.dumps({"op": "login", "user": f"ghost{i}-{n}", "password": "x" * 8}) + b"\n"
            for n in range(logins)
        )
        wire.writer.write(b"".join(requests))
    # With one thread, all but one wait in the queue.
    while server.passwords.queued < (queued or FLOOD_ADDRESSES - 1):  # noqa: ASYNC110
        await asyncio.sleep(0)  # (nothing announces a queued hash)
    return wires


async def legitimate_login(server: Server, started: int) -> None:
    """Log in as alice; assert it waited for few of the flood's hashes, not all
    (`started`: the pool's count of hashes started when the flood ended)."""
    async with wire_from(server, "127.0.0.2") as wire:
        reply = await asyncio.wait_for(
            wire.ok("login", user="alice", password=USER_PASSWORD), REPLY_TIMEOUT
        )
        assert reply["user"] == "alice"
    # Its own, the one hashing when the flood ended, perhaps one more
    # started before the server read the close: never the flood's 19 queued.
    assert server.passwords.started - started < FLOOD_ADDRESSES // 2


async def test_a_flood_that_resets_leaves_no_hashing_behind(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_concurrent_logins=1) as srv,
        open_user_wire(srv, "admin") as admin,
        AsyncExitStack() as stack,
    ):
        await create_user(admin, "alice")
        wires = await flood(srv, stack)
        queued, started = srv.passwords.queued, srv.passwords.started
        for wire in wires:
            # Linger 0: the close is a reset, as from a client that went away.
            sock = wire.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            wire.writer.transport.abort()
        await legitimate_login(srv, started)
        # What the flood had queued was dropped, not hashed (one may have
        # started between the count and the resets reaching the server).
        assert srv.passwords.cancelled >= queued - 1
        assert srv.passwords.queued == 0


async def test_a_flood_that_hangs_up_waits_behind_a_live_login(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_concurrent_logins=1) as srv,
        open_user_wire(srv, "admin") as admin,
        AsyncExitStack() as stack,
    ):
        await create_user(admin, "alice")
        wires = await flood(srv, stack)
        started = srv.passwords.started
        for wire in wires:
            # An ordinary close: the server sees EOF, and answers what it
            # read if the client is still there to read it. It cannot know yet.
            wire.writer.write_eof()
        await legitimate_login(srv, started)
        # The flood's logins are still answered, after it.
        for wire in wires:
            reply = await wire.recv()
            assert reply["error"]["code"] == "auth_failed", reply


async def test_a_flood_from_more_addresses_than_the_queue_holds_spares_known_clients(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "data", max_concurrent_logins=1, max_queued_logins=4) as srv,
        open_user_wire(srv, "admin") as admin,
        AsyncExitStack() as stack,
    ):
        await create_user(admin, "alice")
        # alice has logged in from 127.0.0.2 before: the address is trusted.
        async with wire_from(srv, "127.0.0.2") as wire:
            await wire.ok("login", user="alice", password=USER_PASSWORD)
        # The flood keeps the queue full: more logins than it can hash soon.
        await flood(srv, stack, queued=4, logins=50)
        # Someone new is refused at once while the flood lasts: typed, retryable.
        async with wire_from(srv, "127.0.0.9") as wire:
            error = await wire.error("login", "limit_exceeded", user="alice", password="x" * 8)
            assert error["limit"] == "max_queued_logins"
        # alice's next login takes a flood hash's place and goes first.
        await legitimate_login(srv, srv.passwords.started)
