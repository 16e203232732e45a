"""End-to-end tests of the client library against a real server on an ephemeral port.

No mocks: every test talks to a `Server` bound to 127.0.0.1 port 0. Nothing
waits by sleeping; where a test needs the server to hold a reply back it uses a
long-poll `pull` and releases it with a publish from another connection.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import ADMIN_PASSWORD, PROTOCOL_OPS, USER_PASSWORD, running_server
from tcpmq.client import (
    Address,
    Client,
    ConnectFailed,
    ConnectionClosed,
    connect,
    parse_url,
)
from tcpmq.errors import (
    AlreadyExists,
    AuthFailed,
    BadRequest,
    ErrorCode,
    Forbidden,
    FrameTooLarge,
    LimitExceeded,
    NotFound,
    TcpmqError,
    Unauthenticated,
    UnknownOp,
)
from tcpmq.models import (
    AckResult,
    ChannelInfo,
    Identity,
    LoginResult,
    Message,
    NackResult,
    OpHelp,
    PublishResult,
    QueueInfo,
    SubscribeResult,
    UserInfo,
)
from tcpmq.server import Server

pytestmark = pytest.mark.every_store


def url_of(server: Server) -> str:
    return f"tcpmq://{server.host}:{server.port}"


@pytest.fixture
async def admin_client(server: Server) -> AsyncIterator[Client]:
    async with connect(url_of(server), token=server.mint_token("admin")) as client:
        yield client


async def user_client(server: Server, admin_client: Client, name: str) -> Client:
    await admin_client.user_create(name, USER_PASSWORD)
    return await connect(url_of(server), token=server.mint_token(name))


@pytest.fixture
async def alice(server: Server, admin_client: Client) -> AsyncIterator[Client]:
    client = await user_client(server, admin_client, "alice")
    async with client:
        yield client


@pytest.fixture
async def bob(server: Server, admin_client: Client) -> AsyncIterator[Client]:
    client = await user_client(server, admin_client, "bob")
    async with client:
        yield client


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- URL parsing (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcpmq://127.0.0.1:7878", Address("127.0.0.1", 7878)),
        ("tcpmq://127.0.0.1", Address("127.0.0.1", 7878)),
        ("tcpmq://localhost:9000/", Address("localhost", 9000)),
        ("tcpmq://broker.example.com:1", Address("broker.example.com", 1)),
        ("tcpmq://[::1]:7879", Address("::1", 7879)),
        ("tcpmq://[::1]", Address("::1", 7878)),
        ("TCPMQ://Example.COM:65535", Address("example.com", 65535)),
    ],
)
def test_parse_url(url: str, expected: Address) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "127.0.0.1:7878",
        "http://127.0.0.1:7878",
        "tcpmq://",
        "tcpmq://:7878",
        "tcpmq://127.0.0.1:0",
        "tcpmq://127.0.0.1:65536",
        "tcpmq://127.0.0.1:port",
        "tcpmq://[::1",
        "tcpmq://127.0.0.1:7878/queue",
        "tcpmq://127.0.0.1:7878?x=1",
        "tcpmq://127.0.0.1:7878#frag",
        "tcpmq://alice:secret@127.0.0.1:7878",
    ],
)
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_connect_checks_arguments_before_connecting() -> None:
    with pytest.raises(ValueError):
        connect("http://127.0.0.1")
    with pytest.raises(ValueError):
        connect(token="t", user="alice", password=USER_PASSWORD)
    with pytest.raises(ValueError):
        connect(user="alice")
    with pytest.raises(ValueError):
        connect(password=USER_PASSWORD)
    with pytest.raises(ValueError):
        connect(timeout=0)


def test_connection_closed_from_bye() -> None:
    exc = ConnectionClosed.from_bye(
        {"code": "limit_exceeded", "message": "too many", "limit": "max_connections", "max": 3}
    )
    assert isinstance(exc, TcpmqError)
    assert exc.code is ErrorCode.LIMIT_EXCEEDED
    assert exc.details == {"limit": "max_connections", "max": 3}
    copy = exc.clone()
    assert copy is not exc
    assert (copy.code, copy.message, copy.details) == (exc.code, exc.message, exc.details)
    assert ConnectionClosed.from_bye({"code": "from_the_future"}).code == "from_the_future"
    assert ConnectionClosed.from_bye(None).code is ErrorCode.SHUTTING_DOWN


# -- connecting and authenticating ------------------------------------------------


async def test_greeting_is_kept(server: Server) -> None:
    async with connect(url_of(server), anonymous=True) as client:
        assert client.server_info["event"] == "hello"
        assert client.server_info["server"] == "tcpmq"
        assert client.server_info["protocol"] == 1
        assert client.server_info["max_frame_bytes"] == 1024 * 1024
        assert client.address == Address(server.host, server.port)
        assert not client.closed


async def test_await_connect_and_close(server: Server) -> None:
    client = await connect(url_of(server), token=server.mint_token("admin"))
    try:
        assert await client.whoami() == Identity(user="admin", role="admin")
    finally:
        await client.close()
    assert client.closed
    await client.close()  # idempotent


async def test_unauthenticated_connection(server: Server) -> None:
    async with connect(url_of(server), anonymous=True) as client:
        await client.ping()
        with pytest.raises(Unauthenticated):
            await client.whoami()
        with pytest.raises(Unauthenticated):
            await client.channel_list()


async def test_connect_with_token(server: Server) -> None:
    async with connect(url_of(server), token=server.mint_token("admin")) as client:
        identity = await client.whoami()
        assert identity.user == "admin"
        assert identity.role == "admin"


async def test_connect_with_password_and_reuse_token(server: Server) -> None:
    async with connect(url_of(server), user="admin", password=ADMIN_PASSWORD) as client:
        assert (await client.whoami()).user == "admin"
        result = await client.login("admin", ADMIN_PASSWORD, ttl=60)
        assert isinstance(result, LoginResult)
        assert (result.user, result.role) == ("admin", "admin")
        assert result.expires_at is not None
        assert result.expires_at == pytest.approx(time.time() + 60, abs=5)
    async with connect(url_of(server), token=result.token) as client:
        assert (await client.whoami()).user == "admin"


async def test_auth_method(server: Server) -> None:
    async with connect(url_of(server), anonymous=True) as client:
        identity = await client.auth(server.mint_token("admin"))
        assert isinstance(identity, Identity)
        assert (identity.user, identity.role) == ("admin", "admin")
        assert identity.expires_at is not None


async def test_auth_failures(server: Server) -> None:
    async with connect(url_of(server), anonymous=True) as client:
        with pytest.raises(AuthFailed):
            await client.auth("not-a-token")
        with pytest.raises(AuthFailed):
            await client.login("admin", "wrong-password")
        with pytest.raises(AuthFailed):
            await client.login("nobody", USER_PASSWORD)
        # A failed auth leaves the connection usable.
        await client.ping()
    with pytest.raises(AuthFailed):
        await connect(url_of(server), token="not-a-token")
    with pytest.raises(AuthFailed):
        async with connect(url_of(server), user="admin", password="wrong-password"):
            pass


async def test_connect_refused() -> None:
    port = free_port()
    with pytest.raises(ConnectFailed) as caught:
        await connect(f"tcpmq://127.0.0.1:{port}", timeout=5, anonymous=True)
    # One family of errors for the library, and the socket error for code written against it.
    assert isinstance(caught.value, TcpmqError)
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_connect_without_credentials_fails_at_once() -> None:
    # No socket is opened: the port is never listened on, and the error is about the call.
    with pytest.raises(ValueError, match="needs credentials"):
        connect(f"tcpmq://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="anonymous"):
        connect(token="t", anonymous=True)


async def test_bye_instead_of_greeting(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_connections=1) as srv,
        # Authenticated: an unauthenticated one would be shed to make room.
        connect(url_of(srv), token=srv.mint_token("admin")) as first,
    ):
        with pytest.raises(ConnectionClosed) as info:
            await connect(url_of(srv), anonymous=True)
        assert info.value.code is ErrorCode.LIMIT_EXCEEDED
        assert info.value.details.get("limit") == "max_connections"
        await first.ping()


# -- every op ----------------------------------------------------------------------


async def test_help(admin_client: Client) -> None:
    ops = await admin_client.help()
    assert all(isinstance(op, OpHelp) for op in ops)
    assert {op.op for op in ops} >= PROTOCOL_OPS
    pull = next(op for op in ops if op.op == "pull")
    assert "channel" in pull.fields
    assert pull.summary


async def test_info(server: Server, admin_client: Client) -> None:
    about = await admin_client.info()
    store = "redis" if server.config.store.startswith("redis") else server.config.store
    assert (about.server, about.store) == ("tcpmq", store)
    assert about.limits["max_frame_bytes"] == server.config.limits.max_frame_bytes
    assert about.limits["max_depth"] == 128


async def test_users(server: Server, admin_client: Client) -> None:
    created = await admin_client.user_create("carol", USER_PASSWORD)
    assert isinstance(created, UserInfo)
    assert (created.name, created.role) == ("carol", "user")
    assert created.created_at == pytest.approx(time.time(), abs=60)
    dave = await admin_client.user_create("dave", USER_PASSWORD, role="admin")
    assert dave.role == "admin"

    users = await admin_client.user_list()
    assert [u.name for u in users] == ["admin", "carol", "dave"]
    assert await admin_client.user_get("carol") == created

    with pytest.raises(AlreadyExists):
        await admin_client.user_create("carol", USER_PASSWORD)
    await admin_client.user_delete("carol")
    with pytest.raises(NotFound):
        await admin_client.user_get("carol")
    with pytest.raises(NotFound):
        await admin_client.user_delete("carol")
    assert [u.name for u in await admin_client.user_list()] == ["admin", "dave"]


async def test_user_permissions(admin_client: Client, alice: Client) -> None:
    assert (await alice.user_get("alice")).name == "alice"
    with pytest.raises(Forbidden):
        await alice.user_get("admin")
    with pytest.raises(Forbidden):
        await alice.user_list()
    with pytest.raises(Forbidden):
        await alice.user_create("eve", USER_PASSWORD)
    with pytest.raises(Forbidden):
        await alice.user_delete("admin")
    with pytest.raises(Forbidden):
        await admin_client.user_delete("admin")  # the last admin


async def test_channels(alice: Client, bob: Client) -> None:
    created = await alice.channel_create("orders")
    assert isinstance(created, ChannelInfo)
    assert (created.name, created.owner, created.published, created.queue_count) == (
        "orders",
        "alice",
        0,
        0,
    )
    await bob.channel_create("audit")
    with pytest.raises(AlreadyExists):
        await bob.channel_create("orders")

    channels = await bob.channel_list()
    assert [c.name for c in channels] == ["audit", "orders"]

    await alice.subscribe("orders", "billing")
    await alice.publish("orders", 1)
    got = await bob.channel_get("orders")
    assert (got.published, got.queue_count) == (1, 1)
    assert got.queues is not None
    assert [q.name for q in got.queues] == ["billing"]

    with pytest.raises(Forbidden):
        await bob.channel_delete("orders")
    await alice.channel_delete("orders")
    with pytest.raises(NotFound):
        await alice.channel_get("orders")
    with pytest.raises(NotFound):
        await alice.channel_delete("orders")
    assert [c.name for c in await alice.channel_list()] == ["audit"]


async def test_subscribe_and_queues(alice: Client, bob: Client) -> None:
    await alice.channel_create("orders")
    first = await alice.subscribe("orders")
    assert isinstance(first, SubscribeResult)
    assert first.created is True
    assert isinstance(first.queue, QueueInfo)
    assert (first.queue.name, first.queue.channel, first.queue.owner) == (
        "alice",
        "orders",
        "alice",
    )
    assert first.queue.ack_timeout == 30.0
    assert (first.queue.depth, first.queue.inflight) == (0, 0)

    again = await alice.subscribe("orders", ack_timeout=2.5)
    assert again.created is False
    assert again.queue.ack_timeout == 2.5

    billing = await bob.subscribe("orders", "billing", ack_timeout=60)
    assert billing.created is True
    with pytest.raises(Forbidden):
        await alice.subscribe("orders", "billing")
    with pytest.raises(NotFound):
        await alice.subscribe("nowhere")

    await alice.publish("orders", "x")
    queues = await alice.queue_list("orders")
    assert [(q.name, q.owner, q.depth) for q in queues] == [
        ("alice", "alice", 1),
        ("billing", "bob", 1),
    ]
    with pytest.raises(NotFound):
        await alice.queue_list("nowhere")

    # The channel's owner may delete any queue of it; others only their own.
    with pytest.raises(Forbidden):
        await bob.queue_delete("orders", "alice")
    await alice.queue_delete("orders", "billing")
    with pytest.raises(NotFound):
        await alice.queue_delete("orders", "billing")
    assert [q.name for q in await bob.queue_list("orders")] == ["alice"]


async def test_publish_pull_ack_nack(alice: Client) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")

    one = await alice.publish("orders", {"order": 1234, "total": "19.90"})
    assert isinstance(one, PublishResult)
    assert one == PublishResult(message_ids=[1], queues=1)
    batch = await alice.publish_batch("orders", ["a", None, 3])
    assert batch == PublishResult(message_ids=[2, 3, 4], queues=1)

    first = await alice.pull("orders")
    assert len(first) == 1
    msg = first[0]
    assert isinstance(msg, Message)
    assert (msg.id, msg.data, msg.publisher, msg.attempt) == (
        1,
        {"order": 1234, "total": "19.90"},
        "alice",
        1,
    )
    assert msg.published_at == pytest.approx(time.time(), abs=60)

    rest = await alice.pull("orders", queue="alice", max=10)
    assert [(m.id, m.data) for m in rest] == [(2, "a"), (3, None), (4, 3)]
    assert await alice.pull("orders", max=10) == []

    acked = await alice.ack("orders", [1, 2, 99])
    assert isinstance(acked, AckResult)
    assert acked == AckResult(acked=2, unknown=[99])

    nacked = await alice.nack("orders", (i for i in (3, 4, 1)), queue="alice")
    assert isinstance(nacked, NackResult)
    assert nacked == NackResult(requeued=2, unknown=[1])

    again = await alice.pull("orders", max=10)
    assert [(m.id, m.attempt) for m in again] == [(3, 2), (4, 2)]
    assert (await alice.ack("orders", [3, 4])).acked == 2


async def test_publish_to_channel_without_queues(alice: Client) -> None:
    await alice.channel_create("empty")
    assert await alice.publish("empty", None) == PublishResult(message_ids=[1], queues=0)


async def test_pull_ack_permissions(alice: Client, bob: Client) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")
    with pytest.raises(Forbidden):
        await bob.pull("orders", "alice")
    with pytest.raises(Forbidden):
        await bob.ack("orders", [1], queue="alice")
    with pytest.raises(Forbidden):
        await bob.nack("orders", [1], queue="alice")
    with pytest.raises(NotFound):
        await bob.pull("orders")  # bob has no queue there
    with pytest.raises(NotFound):
        await alice.pull("nowhere")
    with pytest.raises(NotFound):
        await alice.publish("nowhere", 1)


async def test_bad_request_carries_field(alice: Client) -> None:
    with pytest.raises(BadRequest) as info:
        await alice.channel_create("bad name!")
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert info.value.details.get("field") == "name"

    await alice.channel_create("orders")
    await alice.subscribe("orders")
    with pytest.raises(BadRequest) as info:
        await alice.pull("orders", max=0)
    assert info.value.details.get("field") == "max"
    with pytest.raises(BadRequest):
        await alice.publish_batch("orders", [])
    with pytest.raises(BadRequest):
        await alice.subscribe("orders", ack_timeout=0.0)
    # Errors do not disturb the connection.
    await alice.ping()


async def test_limit_exceeded_carries_details(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_queue_messages=2) as srv,
        connect(url_of(srv), token=srv.mint_token("admin")) as client,
    ):
        await client.channel_create("c")
        await client.subscribe("c")
        with pytest.raises(LimitExceeded) as info:
            await client.publish_batch("c", [1, 2, 3])
        assert info.value.details == {"limit": "max_queue_messages", "max": 2}
        assert (await client.queue_list("c"))[0].depth == 0


async def test_request_low_level(alice: Client) -> None:
    assert await alice.request("ping") == {}
    assert await alice.request("whoami") == {"user": "alice", "role": "user"}
    reply = await alice.request("channel.create", name="raw")
    assert reply["channel"]["name"] == "raw"
    with pytest.raises(UnknownOp):
        await alice.request("nonsense")
    with pytest.raises(BadRequest) as info:
        await alice.request("ping", surprise=1)
    assert info.value.details.get("field") == "surprise"
    with pytest.raises(ValueError):
        await alice.request("ping", id=1)


async def test_frame_too_large_is_refused_locally(alice: Client) -> None:
    await alice.channel_create("big")
    limit = alice.server_info["max_frame_bytes"]
    with pytest.raises(FrameTooLarge):
        await alice.publish("big", "x" * limit)
    # Nothing was sent, so the connection is still there.
    await alice.ping()
    # The largest data a message may have, stored, is a little smaller (protocol.md).
    assert (await alice.publish("big", "x" * (limit - 400))).message_ids == [1]


async def test_frame_too_large_from_the_server(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=4096) as srv,
        connect(url_of(srv), token=srv.mint_token("admin")) as client,
    ):
        await client.channel_create("big")
        # Switch off the client's own check to see what the server does.
        client._link.connection.max_frame_bytes = None
        too_big, behind = await asyncio.gather(
            client.publish("big", "x" * 5000), client.ping(), return_exceptions=True
        )
        assert isinstance(too_big, FrameTooLarge)
        assert too_big.details == {"limit": "max_frame_bytes", "max": 4096}
        # The server closes the connection after that reply, without a bye.
        assert isinstance(behind, ConnectionClosed)
        assert behind.code is ErrorCode.SHUTTING_DOWN
        assert client.closed


# -- pipelining, long-polls, timeouts ---------------------------------------------


async def test_pipelined_publishes_keep_call_order(alice: Client) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")
    results = await asyncio.gather(*(alice.publish("orders", n) for n in range(500)))
    ids = [r.message_ids[0] for r in results]
    assert ids == list(range(1, 501))
    messages = await alice.pull("orders", max=1000)
    assert [m.data for m in messages] == list(range(500))


async def test_pipelined_mixed_calls(alice: Client) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")
    calls = []
    for n in range(100):
        calls.append(alice.publish("orders", n))
        calls.append(alice.whoami())
        calls.append(alice.channel_get("nowhere"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    for n in range(100):
        published, identity, missing = results[3 * n : 3 * n + 3]
        assert isinstance(published, PublishResult)
        assert published.message_ids == [n + 1]
        assert identity == Identity(user="alice", role="user")
        assert isinstance(missing, NotFound)


async def test_long_poll_released_by_other_client(alice: Client, server: Server) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")
    async with connect(url_of(server), token=server.mint_token("alice")) as consumer:
        started = time.monotonic()
        waiting = asyncio.create_task(consumer.pull("orders", max=10, wait=30))
        await alice.publish("orders", "wake up")
        messages = await waiting
        assert [m.data for m in messages] == ["wake up"]
        assert time.monotonic() - started < 15


async def test_pull_wait_extends_timeout(server: Server) -> None:
    token = server.mint_token("admin")
    async with connect(url_of(server), token=token, timeout=0.5) as client:
        await client.channel_create("quiet")
        await client.subscribe("quiet")
        # The server answers after 1 s, beyond `timeout`, but within timeout + wait;
        # a pull behind it waits its turn just as long and must not time out either.
        first, second = await asyncio.gather(
            client.pull("quiet", wait=1.0), client.pull("quiet", wait=0.1)
        )
        assert first == second == []


async def test_a_long_poll_does_not_hold_up_other_calls(server: Server) -> None:
    async with connect(url_of(server), token=server.mint_token("admin")) as client:
        await client.channel_create("quiet")
        await client.subscribe("quiet")
        polling = asyncio.create_task(client.pull("quiet", wait=60))
        await asyncio.sleep(0)  # let the pull be written first
        # Far less than the pull's 60 s: the ping ends the wait, and the pull
        # gets what is ready (nothing).
        await asyncio.wait_for(client.ping(), 10)
        assert await asyncio.wait_for(polling, 10) == []


async def test_waiting_pull_on_deleted_channel(alice: Client, server: Server) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")
    async with connect(url_of(server), token=server.mint_token("alice")) as consumer:
        waiting = asyncio.create_task(consumer.pull("orders", wait=30))
        await asyncio.sleep(0)  # let the pull be written
        await alice.channel_delete("orders")
        with pytest.raises(NotFound):
            await waiting
        await consumer.ping()


async def test_timed_out_call_keeps_replies_aligned(server: Server) -> None:
    token = server.mint_token("admin")
    async with (
        connect(url_of(server), token=token) as publisher,
        connect(url_of(server), token=token, timeout=0.3) as client,
    ):
        await client.channel_create("orders")
        await client.subscribe("orders")
        # A raw request gets no extra time for its wait, so it times out ...
        with pytest.raises(TimeoutError):
            await client.request("pull", channel="orders", wait=30)
        # ... and its reply, released by this publish, must go to nobody.
        await publisher.publish("orders", "lost to the abandoned pull")
        assert await client.whoami() == Identity(user="admin", role="admin")
        assert (await client.publish("orders", "next")).message_ids == [2]
        assert await client.request("ping") == {}


async def test_timeout_after_a_long_poll_is_not_delayed(server: Server) -> None:
    token = server.mint_token("admin")
    async with (
        connect(url_of(server), token=token) as publisher,
        connect(url_of(server), token=token, timeout=0.3) as client,
    ):
        await client.channel_create("orders")
        await client.subscribe("orders")
        waiting = asyncio.create_task(client.pull("orders", wait=20))
        # Not a synchronisation: the scenario needs the 0.3 s of the calls above
        # to pass, so that the client's deadline timer is re-armed for the pull.
        await asyncio.sleep(0.5)
        await publisher.publish("orders", 1)
        assert len(await waiting) == 1
        # The long pull's far deadline is gone with it; this call gets its own 0.3 s.
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request("pull", channel="orders", wait=30)
        assert time.monotonic() - started < 5


async def test_cancelled_call_keeps_replies_aligned(server: Server) -> None:
    token = server.mint_token("admin")
    async with (
        connect(url_of(server), token=token) as publisher,
        connect(url_of(server), token=token) as client,
    ):
        await client.channel_create("orders")
        await client.subscribe("orders")
        waiting = asyncio.create_task(client.pull("orders", wait=30))
        behind = asyncio.create_task(client.whoami())
        await asyncio.sleep(0)  # let both requests be written
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await publisher.publish("orders", 1)
        assert (await behind).user == "admin"
        assert (await client.channel_get("orders")).published == 1


# -- connection end ----------------------------------------------------------------


async def test_server_stop_fails_pending_call(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as srv:
        client = await connect(url_of(srv), token=srv.mint_token("admin"))
        await client.channel_create("orders")
        await client.subscribe("orders")
        waiting = asyncio.create_task(client.pull("orders", wait=60))
        await asyncio.sleep(0)  # let the pull be written
        await srv.stop()
        with pytest.raises(ConnectionClosed) as info:
            await waiting
        assert info.value.code is ErrorCode.SHUTTING_DOWN
        await client.wait_closed()
        assert client.closed
        assert client.close_reason is not None
        assert client.close_reason.code is ErrorCode.SHUTTING_DOWN
        with pytest.raises(ConnectionClosed):
            await client.ping()
        await client.close()


async def test_close_fails_pending_calls(alice: Client) -> None:
    await alice.channel_create("orders")
    await alice.subscribe("orders")
    waiting = asyncio.create_task(alice.pull("orders", wait=60))
    behind = asyncio.create_task(alice.ping())
    await asyncio.sleep(0)  # let both requests be written
    await alice.close()
    for task in (waiting, behind):
        with pytest.raises(ConnectionClosed):
            await task
    with pytest.raises(ConnectionClosed):
        await alice.whoami()


async def test_deleted_user_gets_bye(admin_client: Client, alice: Client) -> None:
    await admin_client.user_delete("alice")
    await alice.wait_closed()
    assert alice.close_reason is not None
    assert alice.close_reason.code is ErrorCode.AUTH_FAILED
    with pytest.raises(ConnectionClosed) as info:
        await alice.whoami()
    assert info.value.code is ErrorCode.AUTH_FAILED


async def test_auth_timeout_bye(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", auth_timeout=0.2) as srv,
        connect(url_of(srv), anonymous=True) as client,
    ):
        await client.wait_closed()
        assert client.close_reason is not None
        assert client.close_reason.code is ErrorCode.UNAUTHENTICATED


async def test_channel_create_exist_ok_returns_the_channel(admin_client: Client) -> None:
    created = await admin_client.channel_create("declared")
    again = await admin_client.channel_create("declared", exist_ok=True)
    assert (again.name, again.owner, again.created_at) == (
        created.name,
        created.owner,
        created.created_at,
    )
    with pytest.raises(AlreadyExists):
        await admin_client.channel_create("declared")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": [1, float("-inf")]}])
async def test_publishing_nan_or_infinity_is_refused_not_nulled(
    admin_client: Client, bad: object
) -> None:
    await admin_client.channel_create("numbers")
    await admin_client.subscribe("numbers")
    with pytest.raises(ValueError, match="NaN and Infinity"):
        await admin_client.publish("numbers", bad)
    # Nothing went out, and the connection goes on.
    await admin_client.publish("numbers", None)
    [message] = await admin_client.pull("numbers")
    assert message.data is None
