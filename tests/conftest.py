"""Shared fixtures: a real server on an ephemeral loopback port, raw-socket helpers.

Every test that needs a broker gets its own, bound to port 0 with a fresh data
directory; `Server.start()` returns once the socket listens, so no test waits
by sleeping.

Setups: a test marked `every_store` runs once per backend (log, memory, and
redis where `redis-server` is installed: one Redis per test process); one also
marked `over_tls` runs once more, over TLS on the memory store (the wire is the
same on every store, and the suite stays within its time). `open_raw` and
`open_wire` connect as the current test's transport says.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from redisserver import RedisServer, redis_server_path, start_redis
from tcpmq.auth import hash_password
from tcpmq.config import Limits, ServerConfig, StorageConfig, TlsConfig
from tcpmq.redisstore.backend import RedisBackend
from tcpmq.server import Server
from tls_files import TlsFiles, make_tls_files
from tls_stream import open_tls_stream

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
        *("channel.grant", "channel.revoke", "channel.update"),
        *("subscribe", "queue.list", "queue.delete", "queue.purge", "queue.update"),
        *("publish", "pull", "peek", "ack", "nack"),
        *("server.info", "stats", "store.backup"),
    }
)
# The ops accepted before a connection has authenticated.
PRE_AUTH_OPS = frozenset({"ping", "login", "auth"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The broker runs on uvloop in production, so the tests do too.
    return {"uvloop": uvloop.new_event_loop}


# Found once: the redis setups exist only where Redis does (`./run test` installs it).
HAVE_REDIS = redis_server_path() is not None
NO_REDIS = "redis-server is not on PATH: every test of the redis store is SKIPPED"

# The backends a test marked `every_store` runs against (see `store` below).
STORES = ("log", "memory", "redis") if HAVE_REDIS else ("log", "memory")
_current_store = "log"
# The port of this worker's Redis while the current test runs on the redis store,
# and the key prefix of each data directory the test gave a server (see `store_setting`).
_redis_port: int | None = None
_redis_prefixes: dict[Path, str] = {}
# "tcp", or "tls" for a test's `over_tls` run (see `transport` below).
_current_transport = "tcp"
_tls_files: TlsFiles | None = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis per test process (xdist worker), shared by its tests: each config
    gets its own key prefix (see `store_setting`), so they never see each other's keys."""
    if not HAVE_REDIS:
        print(f"\n*** {NO_REDIS} ***", file=sys.stderr)
        pytest.skip(NO_REDIS)
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend servers of this test use: "log" unless the test is marked `every_store`."""
    global _current_store, _redis_port
    _current_store = getattr(request, "param", "log")
    if _current_store == "redis":
        _redis_port = request.getfixturevalue("redis_server").port
    yield _current_store
    _current_store = "log"
    _redis_port = None
    _redis_prefixes.clear()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """How servers of this test listen and raw wires connect: "tcp", or "tls" (`over_tls`)."""
    global _current_transport, _tls_files
    _current_transport = getattr(request, "param", "tcp")
    if _current_transport == "tls":
        _tls_files = request.getfixturevalue("tls_files")
    yield _current_transport
    _current_transport = "tcp"
    _tls_files = None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The protocol suite runs against every backend, so a new backend only has to pass it;
    # and over TLS, so the ordering and closing rules hold there too.
    if metafunc.definition.get_closest_marker("every_store"):
        setups = [("log", "tcp"), ("memory", "tcp")]
        ids = ["log", "memory"]
        if HAVE_REDIS and not metafunc.definition.get_closest_marker("local_store"):
            setups.append(("redis", "tcp"))
            ids.append("redis")
        if metafunc.definition.get_closest_marker("over_tls"):
            setups.append(("memory", "tls"))
            ids.append("memory-tls")
        metafunc.parametrize(("store", "transport"), setups, indirect=True, ids=ids)


def make_config(
    data_dir: Path,
    storage: dict[str, Any] | None = None,
    *,
    default_channel_access: str = "public",
    **limits: Any,
) -> ServerConfig:
    """A server's config for the current test's setup.

    Channels are public unless a test asks otherwise: most tests have users
    use each other's channels, and tests/test_channel_access.py asks for
    private ones (and the server's own default) where it matters.
    """
    tls = None
    if _current_transport == "tls":
        assert _tls_files is not None
        tls = TlsConfig(_tls_files.server_pem, _tls_files.server_pem)
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        store=store_setting(data_dir),
        limits=Limits(**limits),
        storage=StorageConfig(**(storage or {})),
        tls=tls,
        default_channel_access=default_channel_access,
    )


def store_setting(data_dir: Path) -> str:
    """`--store` for the current test. On redis, a fresh key prefix on this worker's Redis
    per data directory: a new directory starts empty, as on the log store, and a server
    restarted on the same one finds what it left (restart tests run unchanged)."""
    if _current_store != "redis":
        return _current_store
    assert _redis_port is not None
    prefix = _redis_prefixes.setdefault(data_dir.resolve(), f"t{uuid.uuid4().hex}:")
    return f"redis://127.0.0.1:{_redis_port}/0?prefix={prefix}"


def client_tls() -> ssl.SSLContext | None:
    """The client context the current test's transport needs (None: plain TCP)."""
    if _current_transport != "tls":
        return None
    assert _tls_files is not None
    return _tls_files.client_context()


async def open_raw(
    host: str, port: int, *, limit: int = 16 * 1024 * 1024
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection (as nc, or openssl s_client over TLS) on the current test's transport.

    Over TLS, `writer.write_eof()` sends close_notify and reading goes on (see tls_stream.py).
    """
    tls = client_tls()
    if tls is None:
        return await asyncio.open_connection(host, port, limit=limit)
    return await open_tls_stream(host, port, tls, limit=limit)


@asynccontextmanager
async def running_server(
    data_dir: Path,
    storage: dict[str, Any] | None = None,
    *,
    default_channel_access: str = "public",
    **limits: Any,
) -> AsyncIterator[Server]:
    """A started server on the current test's backend (see `store`)."""
    config = make_config(data_dir, storage, default_channel_access=default_channel_access, **limits)
    async with serving(config) as server:
        yield server


@asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[Server]:
    """A server started with `config` until the block ends."""
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
    backend = server.backend
    if isinstance(backend, RedisBackend):

        def waiting() -> bool:
            return backend.waits.count(channel, queue) > 0
    else:
        broker = backend.broker  # type: ignore[attr-defined]

        def waiting() -> bool:
            return bool(broker.queue(channel, queue).waiters)

    # Nothing announces a parked pull; look once per turn of the loop the server runs on.
    while not waiting():  # noqa: ASYNC110
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
    reader, writer = await open_raw(server.host, server.port, limit=limit)
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
