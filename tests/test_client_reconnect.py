"""`connect(..., reconnect=...)`: the client outlives its connection, and never resends.

The server is stopped under the client and started again on the same port and
data directory; where the broker must keep its state while connections die, a
relay cuts them instead. Whatever the store keeps over a restart, the tests
re-create their channel and queue (idempotently) before they rely on them.

Nothing waits by sleeping. A client has noticed a lost connection once a
long-poll it had in flight raised `ConnectionLost`; calls made after a restart
wait for the reconnect by themselves. Backoff delays are kept in the
milliseconds so that retries are quick, and no assertion is about time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from conftest import ADMIN_PASSWORD, REPLY_TIMEOUT, USER_PASSWORD, make_config
from proxy import relay_to
from tcpmq.client import Backoff, Client, ConnectionClosed, ConnectionLost, connect
from tcpmq.errors import AlreadyExists, ErrorCode, TcpmqError
from tcpmq.server import Server

FAST = Backoff(initial=0.005, max_delay=0.05)
CHANNEL = "events"
QUEUE = "audit"


class Broker:
    """A server that can be stopped and started again on the same port."""

    def __init__(self, data_dir: Path, **limits: Any) -> None:
        self.data_dir = data_dir
        self.limits = limits
        self.port = 0
        self.server: Server | None = None

    @property
    def url(self) -> str:
        return f"tcpmq://127.0.0.1:{self.port}"

    def token(self, user: str) -> str:
        assert self.server is not None
        return self.server.mint_token(user)

    async def start(self) -> None:
        config = dataclasses.replace(make_config(self.data_dir, **self.limits), port=self.port)
        server = Server(config, admin_password=ADMIN_PASSWORD)
        await server.start()
        self.server, self.port = server, server.port

    async def stop(self) -> None:
        assert self.server is not None
        server, self.server = self.server, None
        await server.stop()

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[Client]:
        """A plain client of the running server, with the test's channel and queue."""
        async with connect(self.url, token=self.token("admin")) as client:
            await ensure_queue(client)
            yield client


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    broker = Broker(tmp_path / "data")
    await broker.start()
    try:
        yield broker
    finally:
        if broker.server is not None:
            await broker.stop()


@pytest.fixture
def reconnect_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="tcpmq.client")
    return caplog


async def ensure_queue(client: Client, channel: str = CHANNEL, queue: str = QUEUE) -> None:
    with suppress(AlreadyExists):
        await client.channel_create(channel)
    await client.subscribe(channel, queue)


async def lose_connection(client: Client, broker: Broker) -> None:
    """Stop the server and return once `client` has noticed."""
    sensor = asyncio.create_task(client.pull(CHANNEL, QUEUE, wait=60))
    await asyncio.sleep(0)  # let the long-poll be written
    await broker.stop()
    with pytest.raises(ConnectionLost):
        await sensor
    assert not client.connected


async def drain(client: Client) -> list[Any]:
    messages = await client.pull(CHANNEL, QUEUE, max=100)
    if messages:
        await client.ack(CHANNEL, [m.id for m in messages], QUEUE)
    return [m.data for m in messages]


# -- the backoff policy (pure) ---------------------------------------------------------


def test_backoff_grows_and_is_bounded() -> None:
    backoff = Backoff(initial=0.1, max_delay=5.0, multiplier=2.0, jitter=0.5)
    assert backoff.delay(1, 0.0) == pytest.approx(0.1)
    assert backoff.delay(2, 0.0) == pytest.approx(0.2)
    assert backoff.delay(3, 0.0) == pytest.approx(0.4)
    assert backoff.delay(3, 0.999) == pytest.approx(0.2, rel=0.01)
    for attempt in (10, 100, 10_000, 10**9):
        for rand in (0.0, 0.5, 0.999999):
            delay = backoff.delay(attempt, rand)
            assert 2.5 <= delay <= 5.0
    no_jitter = Backoff(initial=1.0, max_delay=1.0, jitter=0.0)
    assert {no_jitter.delay(n, 0.7) for n in range(1, 50)} == {1.0}


@pytest.mark.parametrize(
    "arguments",
    [
        {"initial": 0},
        {"initial": 2.0, "max_delay": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"max_attempts": 0},
    ],
)
def test_backoff_rejects_nonsense(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**arguments)


# -- a restart under the client ---------------------------------------------------------


async def test_publish_in_flight_during_a_stop_raises_and_is_not_resent(
    broker: Broker, reconnect_log: pytest.LogCaptureFixture
) -> None:
    token = broker.token("admin")
    async with connect(broker.url, token=token, reconnect=FAST) as client:
        await ensure_queue(client)
        # The long-poll holds back the publish behind it: both are in flight.
        parked = asyncio.create_task(client.pull(CHANNEL, QUEUE, wait=60))
        in_flight = asyncio.create_task(client.publish(CHANNEL, "maybe"))
        await asyncio.sleep(0)  # let both be written
        await broker.stop()
        with pytest.raises(ConnectionLost) as info:
            await in_flight
        assert isinstance(info.value, ConnectionClosed)
        assert info.value.code is ErrorCode.SHUTTING_DOWN
        assert "'publish'" in info.value.message
        assert "outcome is unknown" in info.value.message
        with pytest.raises(ConnectionLost):
            await parked
        assert not client.closed

        await broker.start()
        async with broker.admin() as admin:
            # Calls after the restart wait for the new connection and go through.
            after = await client.publish(CHANNEL, "after")
            assert len(after.message_ids) == 1
            # The lost publish was never handled, and the client did not send it again.
            assert await drain(admin) == ["after"]
        assert client.connected

    messages = [r.getMessage() for r in reconnect_log.records]
    assert any("lost" in m and "reconnecting" in m for m in messages)
    assert any("reconnected" in m for m in messages)
    assert token not in reconnect_log.text


async def test_calls_made_while_reconnecting_wait_for_the_server(broker: Broker) -> None:
    async with connect(broker.url, token=broker.token("admin"), reconnect=FAST) as client:
        await ensure_queue(client)
        await lose_connection(client, broker)
        assert not client.closed
        waiting = [
            asyncio.create_task(client.whoami()),
            asyncio.create_task(client.ping()),
            asyncio.create_task(client.subscribe(CHANNEL, "late")),
        ]
        await broker.start()
        async with broker.admin():
            pass  # (re-creates the channel if the restart lost it)
        whoami, _, subscribed = await asyncio.gather(*waiting, return_exceptions=True)
        assert not isinstance(whoami, BaseException)
        assert whoami.user == "admin"
        # The subscribe may have come before or after the channel was re-created.
        assert not isinstance(subscribed, BaseException) or isinstance(subscribed, TcpmqError)
        assert client.connected
        assert client.server_info["event"] == "hello"


async def test_a_call_waiting_too_long_was_not_sent(broker: Broker) -> None:
    async with connect(broker.url, token=broker.token("admin"), reconnect=FAST) as client:
        await ensure_queue(client)
        await lose_connection(client, broker)
        client.timeout = 0.2
        with pytest.raises(TimeoutError, match="not sent"):
            await client.publish(CHANNEL, "never sent")
        client.timeout = REPLY_TIMEOUT
        await broker.start()
        async with broker.admin() as admin:
            await client.publish(CHANNEL, "sent")
            assert await drain(admin) == ["sent"]


async def test_consume_survives_a_restart(broker: Broker) -> None:
    async with (
        broker.admin() as admin,
        connect(broker.url, token=broker.token("admin"), reconnect=FAST) as client,
    ):
        await admin.publish(CHANNEL, "before")
        first = asyncio.Event()
        restarted = asyncio.Event()
        seen: list[Any] = []

        async def consume() -> None:
            async for msg in client.consume(CHANNEL, QUEUE, wait=60):
                seen.append(msg.data)
                first.set()
                await restarted.wait()
                if msg.data == "after":
                    break

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), REPLY_TIMEOUT)
        await broker.stop()
        await broker.start()
        async with broker.admin() as again:
            await again.publish(CHANNEL, "after")
        restarted.set()
        await asyncio.wait_for(task, REPLY_TIMEOUT)
    # "before" is seen again only if the store kept it in flight over the restart.
    assert seen[0] == "before"
    assert seen[-1] == "after"
    assert set(seen) == {"before", "after"}


# -- connections cut under a live broker ------------------------------------------------


async def test_consume_pulls_again_after_a_lost_long_poll(server: Server) -> None:
    async with (
        connect(f"tcpmq://{server.host}:{server.port}", token=server.mint_token("admin")) as admin,
        relay_to(server.host, server.port) as relay,
        connect(relay.url, token=server.mint_token("admin"), reconnect=FAST) as client,
    ):
        await admin.channel_create(CHANNEL)
        # A pull parked on a connection that is gone may take a message with it;
        # a short ack timeout brings such a message back soon.
        await admin.subscribe(CHANNEL, QUEUE, ack_timeout=0.2)
        await admin.publish(CHANNEL, "first")
        progress = asyncio.Event()
        seen: list[Any] = []

        async def consume() -> None:
            async with client.consume(CHANNEL, QUEUE, wait=60) as messages:
                async for msg in messages:
                    seen.append(msg.data)
                    progress.set()  # the loop writes its ack and long-poll next
                    if msg.data == "second":
                        break

        task = asyncio.create_task(consume())
        await asyncio.wait_for(progress.wait(), REPLY_TIMEOUT)
        relay.cut()
        await admin.publish(CHANNEL, "second")
        await asyncio.wait_for(task, REPLY_TIMEOUT)
        assert seen[0] == "first"
        assert seen[-1] == "second"
        assert client.connected
        # Both were acked, the first one possibly on the new connection.
        assert [(q.depth, q.inflight) for q in await admin.queue_list(CHANNEL)] == [(0, 0)]


async def test_explicit_auth_is_used_for_the_next_connection(server: Server) -> None:
    async with (
        relay_to(server.host, server.port) as relay,
        connect(relay.url, reconnect=FAST, anonymous=True) as client,
    ):
        await client.auth(server.mint_token("admin"))
        await ensure_queue(client)
        sensor = asyncio.create_task(client.pull(CHANNEL, QUEUE, wait=60))
        await asyncio.sleep(0)  # let the long-poll be written
        relay.cut()
        with pytest.raises(ConnectionLost):
            await sensor
        assert (await client.whoami()).user == "admin"


# -- when reconnecting stops ----------------------------------------------------------


async def test_deleted_user_is_not_reconnected(
    broker: Broker, reconnect_log: pytest.LogCaptureFixture
) -> None:
    async with broker.admin() as admin:
        await admin.user_create("alice", USER_PASSWORD)
        async with connect(broker.url, token=broker.token("alice"), reconnect=FAST) as alice:
            await admin.user_delete("alice")
            await asyncio.wait_for(alice.wait_closed(), REPLY_TIMEOUT)
            assert alice.closed
            assert alice.close_reason is not None
            assert alice.close_reason.code is ErrorCode.AUTH_FAILED
            with pytest.raises(ConnectionClosed) as info:
                await alice.ping()
            assert info.value.code is ErrorCode.AUTH_FAILED
    assert not any("reconnect" in r.getMessage() for r in reconnect_log.records)
    assert any("ended for good" in r.getMessage() for r in reconnect_log.records)


async def test_refused_token_ends_the_client(broker: Broker, tmp_path: Path) -> None:
    async with connect(broker.url, token=broker.token("admin"), reconnect=FAST) as client:
        await ensure_queue(client)
        await lose_connection(client, broker)
        waiting = asyncio.create_task(client.whoami())
        # Another data directory: another signing secret, so the token is forged now.
        broker.data_dir = tmp_path / "other"
        await broker.start()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(waiting, REPLY_TIMEOUT)
        assert info.value.code is ErrorCode.AUTH_FAILED
        assert "authentication failed" in info.value.message
        assert client.closed


async def test_login_token_is_reused_then_login_again(
    broker: Broker, tmp_path: Path, reconnect_log: pytest.LogCaptureFixture
) -> None:
    async with connect(broker.url, user="admin", password=ADMIN_PASSWORD, reconnect=FAST) as client:
        await ensure_queue(client)
        await lose_connection(client, broker)
        await broker.start()
        assert (await client.whoami()).user == "admin"
        assert "with the token of its last login" in reconnect_log.text

        await ensure_queue(client)
        await lose_connection(client, broker)
        # A new secret refuses the old token; the password still works there.
        broker.data_dir = tmp_path / "other"
        await broker.start()
        assert (await client.whoami()).user == "admin"
        assert "by logging in again" in reconnect_log.text
    assert ADMIN_PASSWORD not in reconnect_log.text


async def test_gives_up_after_max_attempts(broker: Broker) -> None:
    backoff = Backoff(initial=0.001, max_delay=0.005, max_attempts=3)
    async with connect(broker.url, token=broker.token("admin"), reconnect=backoff) as client:
        await ensure_queue(client)
        await lose_connection(client, broker)
        await asyncio.wait_for(client.wait_closed(), REPLY_TIMEOUT)
        assert client.close_reason is not None
        assert "in 3 attempts" in client.close_reason.message
        with pytest.raises(ConnectionClosed):
            await client.ping()


async def test_close_while_reconnecting(broker: Broker) -> None:
    client = await connect(broker.url, token=broker.token("admin"), reconnect=FAST)
    await ensure_queue(client)
    await lose_connection(client, broker)
    waiting = asyncio.create_task(client.ping())
    await asyncio.sleep(0)  # let it start waiting for the connection
    await client.close()
    with pytest.raises(ConnectionClosed):
        await waiting
    assert client.closed
    await client.wait_closed()
    await client.close()  # idempotent


async def test_first_connect_is_not_retried(broker: Broker) -> None:
    url = broker.url
    await broker.stop()
    with pytest.raises(OSError):
        await connect(url, reconnect=True, timeout=5, anonymous=True)
