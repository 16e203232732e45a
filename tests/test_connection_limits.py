"""Connection-level limits: per address, shedding, before authentication, idle,
stalled readers, and the lingering close that gets the last reply through."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import (
    ADMIN_PASSWORD,
    REPLY_TIMEOUT,
    Wire,
    expect_error,
    open_user_wire,
    open_wire,
    running_server,
)
from processes import serve
from tcpmq.config import Limits
from tcpmq.server import Server


@asynccontextmanager
async def connect_from(server: Server, source: str) -> AsyncIterator[Wire]:
    """A raw connection from loopback address `source`; its first line is not read."""
    reader, writer = await asyncio.open_connection(
        server.host, server.port, local_addr=(source, 0), limit=16 * 1024 * 1024
    )
    wire = Wire(reader, writer)
    try:
        yield wire
    finally:
        await wire.close()


def expect_bye(line: dict[str, Any], limit: str, maximum: float) -> None:
    assert line.get("event") == "bye", line
    error = expect_error({"ok": False, **line}, "limit_exceeded")
    assert (error["limit"], error["max"]) == (limit, maximum), error


async def until_counted(server: Server, count: int) -> None:
    """Return once the server holds `count` connections (one loop turn per look)."""
    while len(server.connections) != count:  # noqa: ASYNC110
        await asyncio.sleep(0)


# --- how many connections ------------------------------------------------------


async def test_one_address_is_capped_and_others_are_not(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_connections_per_address=2) as srv,
        connect_from(srv, "127.0.0.1") as first,
        connect_from(srv, "127.0.0.1") as second,
    ):
        for wire in (first, second):
            assert (await wire.recv())["event"] == "hello"
        async with connect_from(srv, "127.0.0.1") as third:
            expect_bye(await third.recv(), "max_connections_per_address", 2)
            assert await third.rest() == b""
        # Another address is not affected.
        async with connect_from(srv, "127.0.0.2") as other:
            assert (await other.recv())["event"] == "hello"
            await other.ok("auth", token=srv.mint_token("admin"))
        # A connection that ends frees its place.
        await second.close()
        await until_counted(srv, 1)
        async with connect_from(srv, "127.0.0.1") as again:
            assert (await again.recv())["event"] == "hello"


async def test_a_full_server_sheds_its_oldest_unauthenticated_connection(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_connections=3) as srv,
        open_user_wire(srv, "admin") as user,
        open_wire(srv) as oldest,
        open_wire(srv) as newer,
        open_wire(srv) as newest,
    ):
        # The newest got in; the oldest that had not authenticated made room.
        expect_bye(await oldest.recv(), "max_connections", 3)
        assert await oldest.rest() == b""
        await newest.ok("auth", token=srv.mint_token("admin"))
        await newer.ok("ping")
        assert (await user.ok("whoami"))["user"] == "admin"


# --- before authentication ---------------------------------------------------------

AUTH_LIMIT = 8192  # the default max_auth_frame_bytes


def padded_ping(size: int) -> bytes:
    """A valid ping request of exactly `size` bytes, no newline (JSON whitespace pads it)."""
    head, tail = b'{"op":"ping","id":1', b"}"
    return head + b" " * (size - len(head) - len(tail)) + tail


async def expect_too_large(wire: Wire, limit: str, maximum: int) -> None:
    reply = await wire.recv()
    error = expect_error(reply, "frame_too_large")
    assert (error["limit"], error["max"]) == (limit, maximum), error
    assert await wire.rest() == b""


async def test_a_line_before_authentication_is_at_most_max_auth_frame_bytes(
    server: Server,
) -> None:
    async with open_wire(server) as wire:
        assert await wire.call_raw(padded_ping(AUTH_LIMIT)) == {"ok": True, "id": 1}
        await wire.send_raw(padded_ping(AUTH_LIMIT + 1) + b"\n")
        await expect_too_large(wire, "max_auth_frame_bytes", AUTH_LIMIT)
    async with open_wire(server) as wire:
        # Refused while it arrives: no newline is ever sent.
        await wire.send_raw(b'{"op":"auth","token":"' + b"t" * (4 * AUTH_LIMIT))
        await expect_too_large(wire, "max_auth_frame_bytes", AUTH_LIMIT)


async def test_the_longest_valid_auth_and_login_fit_before_authentication(
    server: Server,
) -> None:
    async with open_wire(server) as wire:
        id_ = "\x01" * 128  # the longest id, each character escaped to six bytes
        line = orjson.dumps({"op": "login", "id": id_, "user": "u" * 64, "password": "\x01" * 1024})
        assert len(line) > 7000
        reply = await wire.call_raw(line)
        expect_error(reply, "auth_failed")
        line = orjson.dumps({"op": "auth", "id": id_, "token": "t" * 4096})
        expect_error(await wire.call_raw(line), "auth_failed")


async def test_the_full_limit_applies_from_the_line_after_authentication(server: Server) -> None:
    big = padded_ping(512 * 1024)
    async with open_wire(server) as wire:
        auth = orjson.dumps({"op": "auth", "token": server.mint_token("admin")})
        # Pipelined in one write with the auth.
        await wire.send_raw(auth + b"\n" + big + b"\n")
        assert (await wire.recv())["ok"] is True
        assert (await wire.recv())["ok"] is True
    async with open_wire(server) as wire:
        # Behind a login that takes a while: the server waits for its outcome.
        login = orjson.dumps({"op": "login", "user": "admin", "password": ADMIN_PASSWORD})
        await wire.send_raw(login + b"\n" + big + b"\n")
        assert (await wire.recv())["ok"] is True
        assert (await wire.recv())["ok"] is True
    async with open_wire(server) as wire:
        # Behind a failed login the line is judged as unauthenticated.
        login = orjson.dumps({"op": "login", "user": "admin", "password": "wrong-password"})
        await wire.send_raw(login + b"\n" + big + b"\n")
        expect_error(await wire.recv(), "auth_failed")
        await expect_too_large(wire, "max_auth_frame_bytes", AUTH_LIMIT)


# --- lingering close -----------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [True, False])
async def test_the_frame_too_large_reply_survives_a_2_mib_line(
    server: Server, authenticated: bool
) -> None:
    line = b'{"op":"ping","pad":"' + b"p" * (2 * 1024 * 1024) + b'"}\n'
    limit, maximum = (
        ("max_frame_bytes", 1024 * 1024) if authenticated else ("max_auth_frame_bytes", AUTH_LIMIT)
    )
    for _ in range(20):
        async with open_wire(server) as wire:
            if authenticated:
                await wire.ok("auth", token=server.mint_token("admin"))
            # All of it is sent before anything is read, as a naive client does.
            await wire.send_raw(line)
            # The reply, then a clean end (EOF), never a reset.
            reply = orjson.loads(await wire.recv_line())
            error = expect_error(reply, "frame_too_large")
            assert (error["limit"], error["max"]) == (limit, maximum)
            assert await asyncio.wait_for(wire.reader.read(), REPLY_TIMEOUT) == b""


async def test_a_lingering_connection_is_dropped_after_close_linger(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=1024, close_linger=0.2) as srv,
        open_wire(srv) as wire,
    ):
        await wire.send_raw(b"x" * 2048)
        expect_error(await wire.recv(), "frame_too_large")
        # The client neither closes nor stops sending: it is dropped anyway.
        wire.writer.write(b"y" * 4096)
        await asyncio.wait_for(srv.connections.all_closed(), REPLY_TIMEOUT)


# --- idle and stalled connections ----------------------------------------------------


async def test_an_idle_connection_is_closed_and_ping_or_a_long_poll_keep_it(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "data", idle_timeout=0.3) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c")
        # A pull that waits longer than the idle timeout is not idleness.
        assert (await wire.ok("pull", channel="c", wait=0.6))["messages"] == []
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 0.6:
            await wire.ok("ping")
            await asyncio.sleep(0.05)  # the pause between keepalives is the point here
        bye = await wire.recv()
        expect_bye(bye, "idle_timeout", 0.3)
        assert await wire.rest() == b""


async def test_idle_timeout_is_off_by_default(server: Server) -> None:
    # Nothing to wait for: the setting's default says it.
    assert server.app.limits.idle_timeout == 0
    async with open_user_wire(server, "admin") as wire:
        info = await wire.ok("server.info")
        assert info["limits"]["idle_timeout"] == 0


@pytest.mark.parametrize("seconds", [300, 0])
async def test_tcp_keepalive_probes_a_silent_peer(tmp_path: Path, seconds: int) -> None:
    async with (
        running_server(tmp_path / "data", tcp_keepalive=seconds) as srv,
        open_user_wire(srv, "admin"),
    ):
        [connection] = srv.connections.open
        sock = connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == (1 if seconds else 0)
        if seconds:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 300
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 100
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


async def test_a_client_that_reads_nothing_is_closed_and_its_messages_return(
    tmp_path: Path,
) -> None:
    high = 64 * 1024
    async with (
        running_server(
            tmp_path / "data",
            write_buffer_high=high,
            max_pipeline_bytes=high,
            write_stall_timeout=0.3,
            close_linger=0.3,
        ) as srv,
        open_user_wire(srv, "admin") as staller,
        open_user_wire(srv, "admin") as other,
    ):
        await other.ok("channel.create", name="c")
        await other.ok("subscribe", channel="c", ack_timeout=0.5)
        await other.ok("publish", channel="c", messages=[1, 2, 3])
        # It takes the messages, then floods requests and reads no reply.
        staller.writer.write(b'{"op":"pull","channel":"c","max":3}\n')
        chunk = b'{"op":"help"}\n' * 4096
        for _ in range(64):
            staller.writer.write(chunk)
        # The server stops reading it; once closed it reads (and discards) the
        # rest for close_linger seconds, then drops it: drain ends either way.
        with suppress(ConnectionError):
            await asyncio.wait_for(staller.writer.drain(), REPLY_TIMEOUT)
        # Everyone else was served meanwhile, and the messages come back.
        messages = (await other.ok("pull", channel="c", max=3, wait=5))["messages"]
        assert [(m["data"], m["attempt"]) for m in messages] == [(1, 2), (2, 2), (3, 2)]
        # The staller is gone from the server, though it never closed its end.
        await other.close()
        await asyncio.wait_for(srv.connections.all_closed(), REPLY_TIMEOUT)


# --- file descriptors ----------------------------------------------------------------


async def test_more_sockets_than_open_files_leave_the_store_its_descriptors(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    async with serve(
        data_dir,
        "--segment-bytes",
        "4096",
        max_open_files=256,
        TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as server:
        # The cap it chose and said: 256 less the store's reserve and the backlog.
        assert b"open files limit 256: at most 160 connections" in server.startup_log
        flood: list[Wire] = []
        try:
            # One at a time (a burst would overflow the small listen backlog
            # and wait for the client's SYN retries): each is greeted, and
            # past 160 the oldest unauthenticated one makes room.
            for _ in range(400):
                reader, writer = await asyncio.open_connection(server.host, server.port)
                flood.append(Wire(reader, writer))
                assert (await flood[-1].recv())["event"] == "hello"
            for wire in flood[: 400 - 160]:
                expect_bye(await wire.recv(), "max_connections", 160)
            reader, writer = await asyncio.open_connection(server.host, server.port)
            client = Wire(reader, writer)
            try:
                assert (await client.recv())["event"] == "hello"
                await client.ok("login", user="admin", password=ADMIN_PASSWORD)
                assert (await client.ok("server.info"))["limits"]["max_connections"] == 160
                await client.ok("channel.create", name="c")
                await client.ok("subscribe", channel="c")
                # 60 KB in 4 KB segments: a dozen rolls, each a new file.
                for _ in range(60):
                    await client.ok("publish", channel="c", data="m" * 1000)
                messages = (await client.ok("pull", channel="c", max=100))["messages"]
                assert len(messages) == 60
            finally:
                await client.close()
            assert server.process.returncode is None
            assert len(list((data_dir / "store").glob("*.log"))) > 10
        finally:
            for wire in flood:
                await wire.close()


# --- the settings --------------------------------------------------------------------


def test_idle_timeout_and_tcp_keepalive_may_be_off_and_no_other_limit() -> None:
    assert Limits(idle_timeout=0, tcp_keepalive=0).idle_timeout == 0
    for name in ("idle_timeout", "tcp_keepalive"):
        with pytest.raises(ValueError, match=name):
            Limits(**{name: -1})
    for name in ("max_connections_per_address", "max_auth_frame_bytes", "close_linger"):
        with pytest.raises(ValueError, match=name):
            Limits(**{name: 0})


async def until_backed_up(server: Server, count: int) -> None:
    """Return once `count` connections hold write_buffer_high of unsent replies."""
    while server.connections.backed_up_count != count:  # noqa: ASYNC110
        await asyncio.sleep(0)


async def test_readers_that_never_read_share_one_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    high = 64 * 1024
    async with (
        running_server(
            tmp_path / "data",
            write_buffer_high=high,
            max_pipeline_bytes=high,
            max_buffered_bytes=2 * high,
            write_stall_timeout=300,
            close_linger=60,
        ) as srv,
        open_user_wire(srv, "admin") as first,
        open_user_wire(srv, "admin") as second,
        open_user_wire(srv, "admin") as third,
    ):
        # Small socket buffers on both ends, so that a staller's replies stay
        # above the low-water mark (high / 4) once they back up, instead of
        # draining into the kernel and counting as caught up, and the
        # stallers stay in the order they stalled.
        for connection in srv.connections.open:
            sock = connection._transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for client in (first, second, third):
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood = b'{"op":"help"}\n' * 4096
        for count, staller in enumerate((first, second), 1):
            staller.writer.write(flood * 8)
            await until_backed_up(srv, count)
        # A third would pass the budget: the one that stopped reading first goes.
        third.writer.write(flood * 8)
        # Reading from `first` before it is closed would make it a reader again.
        while "passed max_buffered_bytes" not in caplog.text:  # noqa: ASYNC110
            await asyncio.sleep(0)
        with suppress(ConnectionError):  # its unread requests may turn the close into a reset
            while await asyncio.wait_for(first.reader.read(1 << 20), REPLY_TIMEOUT):
                pass
        await until_backed_up(srv, 2)
        assert len(srv.connections) == 2  # the other two are held, not closed
        assert "passed max_buffered_bytes" in caplog.text
