"""Shared fixtures: a real server on an ephemeral loopback port, raw-socket helpers.

Every test that needs a broker gets its own, bound to port 0 with a fresh data
directory; `Server.start()` returns once the socket listens, so no test waits
by sleeping.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from tcpmq.auth import hash_password
from tcpmq.config import Limits, ServerConfig, StorageConfig
from tcpmq.server import Server

ADMIN_PASSWORD = "admin-test-password"
USER_PASSWORD = "user-test-password"
# Hashed once: scrypt is slow on purpose, and every test starts a server.
ADMIN_PASSWORD_HASH = hash_password(ADMIN_PASSWORD)
# Generous: replies normally arrive in microseconds; this only stops a broken test hanging.
REPLY_TIMEOUT = 10.0

# Every op protocol.md documents, written out here so the tests do not take
# the list from the code under test.
PROTOCOL_OPS = frozenset(
    {
        *("ping", "login", "auth", "whoami", "help"),
        *("user.create", "user.list", "user.get", "user.delete"),
        *("user.passwd", "user.revoke_tokens"),
        *("channel.create", "channel.list", "channel.get", "channel.delete"),
        *("subscribe", "queue.list", "queue.delete", "queue.purge"),
        *("publish", "pull", "peek", "ack", "nack"),
        "server.info",
    }
)
# The ops accepted before a connection has authenticated.
PRE_AUTH_OPS = frozenset({"ping", "login", "auth"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The broker runs on uvloop in production, so the tests do too.
    return {"uvloop": uvloop.new_event_loop}


# The backends a test marked `every_store` runs against (see `store` below).
STORES = ("log", "memory")
_current_store = "log"


@pytest.fixture(autouse=True)
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend servers of this test use: "log" unless the test is marked `every_store`."""
    global _current_store
    _current_store = getattr(request, "param", "log")
    yield _current_store
    _current_store = "log"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The protocol suite runs against every backend, so a new backend only has to pass it.
    if metafunc.definition.get_closest_marker("every_store"):
        metafunc.parametrize("store", STORES, indirect=True)


def make_config(
    data_dir: Path, storage: dict[str, Any] | None = None, **limits: Any
) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        store=_current_store,
        limits=Limits(**limits),
        storage=StorageConfig(**(storage or {})),
    )


@asynccontextmanager
async def running_server(
    data_dir: Path, storage: dict[str, Any] | None = None, **limits: Any
) -> AsyncIterator[Server]:
    """A started server on the current test's backend (see `store`)."""
    config = make_config(data_dir, storage, **limits)
    server = Server(config, admin_password_hash=ADMIN_PASSWORD_HASH)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path / "data") as srv:
        yield srv


async def until_pull_waits(server: Server, channel: str, queue: str) -> None:
    """Return once the server has parked a pull on the queue (no sleep: one loop turn each)."""
    broker = server.backend.broker  # type: ignore[attr-defined]
    # Nothing announces a parked pull; look once per turn of the loop the server runs on.
    while not broker.queue(channel, queue).waiters:  # noqa: ASYNC110
        await asyncio.sleep(0)


def expect_error(reply: dict[str, Any], code: str) -> dict[str, Any]:
    """Assert `reply` is an error reply with `code`; returns its `error` object."""
    assert reply.get("ok") is False, reply
    error = reply["error"]
    assert isinstance(error, dict), reply
    assert error.get("code") == code, reply
    assert isinstance(error.get("message"), str), reply
    return error


class Wire:
    """A raw line-JSON connection: what `nc` would do, with a timeout on every read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.hello: dict[str, Any] = {}

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, op: str, **fields: Any) -> None:
        await self.send_raw(orjson.dumps({"op": op, **fields}) + b"\n")

    async def recv_line(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise EOFError("server closed the connection")
        return line

    async def recv(self) -> dict[str, Any]:
        value = orjson.loads(await self.recv_line())
        assert isinstance(value, dict)
        return value

    async def call_raw(self, line: bytes) -> dict[str, Any]:
        """Send one request line as given (a newline is added) and read one reply."""
        await self.send_raw(line + b"\n")
        return await self.recv()

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        await self.send(op, **fields)
        return await self.recv()

    async def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        """Call and assert success; returns the reply."""
        reply = await self.call(op, **fields)
        assert reply["ok"] is True, reply
        return reply

    async def error(self, op: str, code: str, **fields: Any) -> dict[str, Any]:
        """Call and assert failure with `code`; returns the reply's `error` object."""
        return expect_error(await self.call(op, **fields), code)

    async def rest(self) -> bytes:
        """Everything the server still sends until it closes the connection.

        A reset after the server's last bytes counts as a close too.
        """
        chunks: list[bytes] = []
        try:
            while chunk := await asyncio.wait_for(self.reader.read(65536), REPLY_TIMEOUT):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)

    async def closed(self) -> bool:
        """True once the server has closed the connection (EOF within the timeout)."""
        data = await asyncio.wait_for(self.reader.read(), REPLY_TIMEOUT)
        return data == b"" or data.endswith(b"\n")

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@asynccontextmanager
async def open_wire(server: Server, *, limit: int = 16 * 1024 * 1024) -> AsyncIterator[Wire]:
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=limit)
    wire = Wire(reader, writer)
    try:
        wire.hello = await wire.recv()
        assert wire.hello["event"] == "hello", wire.hello
        yield wire
    finally:
        await wire.close()


@asynccontextmanager
async def open_user_wire(server: Server, user: str) -> AsyncIterator[Wire]:
    """A raw connection already authenticated as `user` (with a minted token)."""
    async with open_wire(server) as wire:
        await wire.ok("auth", token=server.mint_token(user))
        yield wire


@pytest.fixture
async def wire(server: Server) -> AsyncIterator[Wire]:
    async with open_wire(server) as w:
        yield w


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[Wire]:
    async with open_user_wire(server, "admin") as w:
        yield w


async def create_user(admin: Wire, name: str, role: str = "user") -> None:
    await admin.ok("user.create", name=name, password=USER_PASSWORD, role=role)


@pytest.fixture
async def alice(server: Server, admin: Wire) -> AsyncIterator[Wire]:
    await create_user(admin, "alice")
    async with open_user_wire(server, "alice") as w:
        yield w


@pytest.fixture
async def bob(server: Server, admin: Wire) -> AsyncIterator[Wire]:
    await create_user(admin, "bob")
    async with open_user_wire(server, "bob") as w:
        yield w


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Long soak and fuzz runs are opt-in; CI runs their bounded versions.
    if os.environ.get("TCPMQ_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set TCPMQ_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
