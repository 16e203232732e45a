"""`Client.consume()` against a real server: acks after the body, nacks for what it did not finish.

The consumer gets a client of its own (its long-polls hold back other replies
on its connection); `admin` publishes and inspects. Nothing waits by
sleeping: redeliveries are awaited with long-polling pulls, and a consumer's
progress with events set in its loop body.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import REPLY_TIMEOUT, running_server, until_pull_waits
from tcpmq.client import Client, ConnectionClosed, Delivery, connect
from tcpmq.errors import NotFound
from tcpmq.server import Server

pytestmark = pytest.mark.every_store

CHANNEL = "jobs"
QUEUE = "work"


def url_of(server: Server) -> str:
    return f"tcpmq://{server.host}:{server.port}"


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[Client]:
    async with connect(url_of(server), token=server.mint_token("admin")) as client:
        await client.channel_create(CHANNEL)
        await client.subscribe(CHANNEL, QUEUE)
        yield client


@pytest.fixture
async def worker(server: Server, admin: Client) -> AsyncIterator[Client]:
    async with connect(url_of(server), token=server.mint_token("admin")) as client:
        yield client


async def inflight(admin: Client) -> tuple[int, int]:
    """(ready, in flight) of the queue."""
    (queue,) = [q for q in await admin.queue_list(CHANNEL) if q.name == QUEUE]
    return queue.depth, queue.inflight


async def redelivered(admin: Client, count: int) -> list[tuple[object, int]]:
    """Pull `count` messages as they become ready again; (data, attempt) of each."""
    got: list[tuple[object, int]] = []
    while len(got) < count:
        batch = await admin.pull(CHANNEL, QUEUE, max=count - len(got), wait=REPLY_TIMEOUT)
        assert batch, f"only {got} came back"
        got.extend((m.data, m.attempt) for m in batch)
    return got


# -- the happy path -----------------------------------------------------------------


async def test_consume_yields_everything_and_acks_it(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(7)))
    seen = []
    async for msg in worker.consume(CHANNEL, QUEUE, batch=3, wait=0, stop_when_empty=True):
        assert isinstance(msg, Delivery)
        assert msg.message.id == msg.id
        assert msg.publisher == "admin"
        assert msg.published_at > 0
        seen.append((msg.data, msg.attempt))
    assert seen == [(n, 1) for n in range(7)]
    assert await inflight(admin) == (0, 0)


async def test_acks_wait_for_the_body_and_go_with_the_next_pull(
    admin: Client, worker: Client
) -> None:
    await admin.publish_batch(CHANNEL, list(range(6)))
    states = []
    async for msg in worker.consume(CHANNEL, QUEUE, batch=3, wait=0, stop_when_empty=True):
        # Nothing is acked while its body runs, nor before its batch is done.
        states.append((msg.data, await inflight(admin)))
    assert states == [
        (0, (3, 3)),
        (1, (3, 3)),
        (2, (3, 3)),
        (3, (0, 3)),  # the first batch was acked together with this pull
        (4, (0, 3)),
        (5, (0, 3)),
    ]
    assert await inflight(admin) == (0, 0)


async def test_long_poll_wakes_on_publish(admin: Client, worker: Client) -> None:
    got = asyncio.Event()
    seen = []

    async def consume() -> None:
        async for msg in worker.consume(CHANNEL, QUEUE, wait=REPLY_TIMEOUT):
            seen.append(msg.data)
            await msg.ack()
            got.set()
            break

    task = asyncio.create_task(consume())
    await admin.publish(CHANNEL, "wake up")
    await asyncio.wait_for(got.wait(), REPLY_TIMEOUT)
    await task
    assert seen == ["wake up"]
    assert await inflight(admin) == (0, 0)


# -- failures inside the loop -------------------------------------------------------


async def test_body_raising_nacks_and_propagates(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, ["ok", "boom", "never seen"])
    with pytest.raises(RuntimeError, match="boom"):
        async for msg in worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT):
            if msg.data == "boom":
                raise RuntimeError("boom")
    # "ok" was processed and acked; the rest is back at once, attempt 2.
    assert await redelivered(admin, 2) == [("boom", 2), ("never seen", 2)]
    assert await inflight(admin) == (0, 2)


async def test_body_raising_inside_async_with(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, ["ok", "boom", "never seen"])
    with pytest.raises(RuntimeError, match="boom"):
        async with worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT) as messages:
            async for msg in messages:
                if msg.data == "boom":
                    raise RuntimeError("boom")
    # async with settles before it returns: no waiting needed.
    assert await inflight(admin) == (2, 0)
    assert await redelivered(admin, 2) == [("boom", 2), ("never seen", 2)]


async def test_break_mid_batch_returns_the_rest_at_once(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(5)))
    async for msg in worker.consume(CHANNEL, QUEUE, batch=5, wait=REPLY_TIMEOUT):
        if msg.data == 1:
            break
    # A bare loop cannot tell break from an exception: 1 comes back with 2, 3, 4.
    assert await redelivered(admin, 4) == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert await inflight(admin) == (0, 4)


async def test_break_inside_async_with_acks_the_current(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(5)))
    async with worker.consume(CHANNEL, QUEUE, batch=5, wait=REPLY_TIMEOUT) as messages:
        async for msg in messages:
            if msg.data == 1:
                break
    assert await inflight(admin) == (3, 0)
    assert await redelivered(admin, 3) == [(2, 2), (3, 2), (4, 2)]


async def test_ack_before_break_in_a_bare_loop(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(3)))
    async for msg in worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT):
        if msg.data == 1:
            assert await msg.ack() is True
            break
    assert await redelivered(admin, 1) == [(2, 2)]


async def test_aclose_settles(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(4)))
    messages = worker.consume(CHANNEL, QUEUE, batch=4, wait=REPLY_TIMEOUT)
    iterator = aiter(messages)
    assert (await anext(iterator)).data == 0
    assert (await anext(iterator)).data == 1
    await messages.aclose()
    # 0 finished (the loop asked for 1), 1 did not: it is back with 2 and 3.
    assert await inflight(admin) == (3, 0)
    assert await redelivered(admin, 3) == [(1, 2), (2, 2), (3, 2)]
    with pytest.raises(RuntimeError):
        aiter(messages)  # once ended, a consumer stays ended


async def test_stop_drains_the_batch_in_hand_and_acks_it(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(5)))
    consumer = worker.consume(CHANNEL, QUEUE, batch=5, wait=60)
    seen = []
    async for msg in consumer:
        if msg.data == 0:
            consumer.stop()
            consumer.stop()  # a second call changes nothing
        seen.append(msg.data)
    assert consumer.stopping
    assert seen == [0, 1, 2, 3, 4]  # the whole batch, not one pull more
    assert await inflight(admin) == (0, 0)


async def test_stop_answers_a_waiting_long_poll(
    server: Server, admin: Client, worker: Client
) -> None:
    consumer = worker.consume(CHANNEL, QUEUE, batch=5, wait=120)
    seen = []

    async def consume() -> str:
        async for msg in consumer:
            seen.append(msg.data)
        return "ended"

    task = asyncio.create_task(consume())
    await admin.publish(CHANNEL, "first")
    await until_pull_waits(server, CHANNEL, QUEUE)  # "first" taken, the next pull parked
    consumer.stop()
    # Ended by the server's answer to the pull, not by cancelling: the task returns.
    assert await asyncio.wait_for(task, REPLY_TIMEOUT) == "ended"
    assert seen == ["first"]
    assert await inflight(admin) == (0, 0)
    await admin.publish(CHANNEL, "after")
    assert await redelivered(admin, 1) == [("after", 1)]  # nothing was left parked


async def test_cancelled_in_the_body_nacks(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(3)))
    in_body = asyncio.Event()

    async def consume() -> None:
        async for msg in worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT):
            if msg.data == 1:
                in_body.set()
                await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(consume())
    await asyncio.wait_for(in_body.wait(), REPLY_TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await redelivered(admin, 2) == [(1, 2), (2, 2)]


async def test_cancelled_during_the_long_poll_returns_late_messages(
    admin: Client, worker: Client
) -> None:
    await admin.publish(CHANNEL, "first")
    processed = asyncio.Event()

    async def consume() -> None:
        async for _ in worker.consume(CHANNEL, QUEUE, wait=60):
            # The last step of the body; the loop then writes the ack of
            # "first" and its next pull before it lets this test run again.
            processed.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(processed.wait(), REPLY_TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The abandoned pull is still parked on the server; this wakes it, and its
    # late reply is nacked instead of waiting out the ack timeout.
    await admin.publish(CHANNEL, "late")
    assert await redelivered(admin, 1) == [("late", 2)]
    assert await inflight(admin) == (0, 1)  # "first" was acked
    await worker.ping()  # and the worker's connection is in order


async def test_queue_deleted_while_consuming(admin: Client, worker: Client) -> None:
    await admin.publish(CHANNEL, "one")
    with pytest.raises(NotFound):
        async for _ in worker.consume(CHANNEL, QUEUE, wait=REPLY_TIMEOUT):
            await admin.queue_delete(CHANNEL, QUEUE)
    await worker.ping()


# -- manual acks ----------------------------------------------------------------------


async def test_manual_ack_and_nack(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, ["keep", "retry", "leave"])
    held: list[Delivery] = []
    consumer = worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT, auto_ack=False)
    async for msg in consumer:
        if msg.data == "keep":
            assert await msg.ack() is True
            assert not msg.pending
        elif msg.data == "retry":
            assert msg.attempt == 1
            assert await msg.nack() is True
        else:
            held.append(msg)  # neither: the loop leaves it to us
        if len(held) == 1:
            break
    # "retry" went back at once; "leave" stays in flight until we decide.
    assert await redelivered(admin, 1) == [("retry", 2)]
    assert await inflight(admin) == (0, 2)
    (leave,) = held
    assert leave.pending
    assert await leave.ack() is True
    assert await inflight(admin) == (0, 1)
    with pytest.raises(RuntimeError):
        await leave.ack()
    with pytest.raises(RuntimeError):
        await leave.nack()


async def test_manual_mode_returns_unyielded_messages(admin: Client, worker: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(3)))
    consumer = worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT, auto_ack=False)
    async for msg in consumer:
        assert msg.data == 0
        break
    # 0 was yielded and is ours to settle; 1 and 2 were not and came back.
    assert await redelivered(admin, 2) == [(1, 2), (2, 2)]
    assert await inflight(admin) == (0, 3)


async def test_ack_after_the_ack_timeout_says_so(server: Server, admin: Client) -> None:
    await admin.subscribe(CHANNEL, QUEUE, ack_timeout=0.1)
    await admin.publish(CHANNEL, "slow")
    async with connect(url_of(server), token=server.mint_token("admin")) as worker:
        consumer = worker.consume(CHANNEL, QUEUE, wait=REPLY_TIMEOUT, auto_ack=False)
        async for msg in consumer:
            # The ack timeout puts it back; someone else takes it and acks it.
            (again,) = await admin.pull(CHANNEL, QUEUE, wait=REPLY_TIMEOUT)
            assert (again.id, again.attempt) == (msg.id, 2)
            await admin.ack(CHANNEL, [again.id], QUEUE)
            assert await msg.ack() is False
            break
        with pytest.raises(RuntimeError):
            await msg.ack()
    assert await inflight(admin) == (0, 0)


# -- the client's end ---------------------------------------------------------------


async def test_client_close_settles_a_suspended_loop(server: Server, admin: Client) -> None:
    await admin.publish_batch(CHANNEL, list(range(3)))
    async with connect(url_of(server), token=server.mint_token("admin")) as worker:
        messages = worker.consume(CHANNEL, QUEUE, batch=3, wait=REPLY_TIMEOUT)
        iterator = aiter(messages)
        assert (await anext(iterator)).data == 0
        assert (await anext(iterator)).data == 1
        # Leaving `async with connect(...)` closes the client: 0 is acked, 1 and 2 return.
    assert await redelivered(admin, 2) == [(1, 2), (2, 2)]
    await iterator.aclose()


async def test_close_from_another_task_ends_the_loop_quietly(admin: Client, worker: Client) -> None:
    await admin.publish(CHANNEL, "one")
    seen = []
    waiting = asyncio.Event()

    async def consume() -> None:
        async for msg in worker.consume(CHANNEL, QUEUE, wait=60):
            seen.append(msg.data)
            waiting.set()  # the loop now long-polls for more

    task = asyncio.create_task(consume())
    await asyncio.wait_for(waiting.wait(), REPLY_TIMEOUT)
    await worker.close()
    await asyncio.wait_for(task, REPLY_TIMEOUT)
    assert seen == ["one"]
    assert await inflight(admin) == (0, 0)


async def test_lost_connection_ends_the_loop_without_reconnect(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data") as srv,
        connect(url_of(srv), token=srv.mint_token("admin")) as client,
    ):
        await client.channel_create(CHANNEL)
        await client.subscribe(CHANNEL, QUEUE)
        await client.publish(CHANNEL, "one")
        with pytest.raises(ConnectionClosed) as info:
            async for _ in client.consume(CHANNEL, QUEUE, wait=REPLY_TIMEOUT):
                await srv.stop()
        assert info.value.code == "shutting_down"
        assert client.closed


async def test_consumer_arguments_are_checked(worker: Client) -> None:
    with pytest.raises(ValueError):
        worker.consume(CHANNEL, batch=0)
    with pytest.raises(ValueError):
        worker.consume(CHANNEL, wait=-1)
    with pytest.raises(ValueError):
        worker.consume(CHANNEL, wait=0)  # would spin
    worker.consume(CHANNEL, wait=0, stop_when_empty=True)


async def test_an_abandoned_bare_loop_is_settled_without_the_cyclic_gc(
    admin: Client, worker: Client
) -> None:
    await admin.publish_batch(CHANNEL, list(range(2)))
    gc.disable()
    try:
        async for _ in worker.consume(CHANNEL, QUEUE, batch=2, wait=REPLY_TIMEOUT):
            break
        assert await redelivered(admin, 2) == [(0, 2), (1, 2)]
    finally:
        gc.enable()


async def test_a_call_beside_a_consumer_does_not_end_its_loop(server: Server) -> None:
    # The ping ends the consumer's waiting pull early and empty; with
    # stop_when_empty the loop must pull again, not take that for an empty queue.
    async with connect(url_of(server), token=server.mint_token("admin")) as client:
        await client.channel_create(CHANNEL)
        await client.subscribe(CHANNEL)
        seen: list[object] = []

        async def work() -> None:
            async for msg in client.consume(CHANNEL, wait=1.0, stop_when_empty=True):
                seen.append(msg.data)

        consuming = asyncio.create_task(work())
        await until_pull_waits(server, CHANNEL, "admin")
        await client.ping()
        await client.publish(CHANNEL, "after the ping")
        await asyncio.wait_for(consuming, REPLY_TIMEOUT)
        assert seen == ["after the ping"]
