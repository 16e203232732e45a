"""Operator views: `queue.list` across channels, channel depth, `queue.purge`, `peek`.

Over a real socket on both backends, then the broker core on its own for
what a socket cannot pin down (which message is the oldest, publish times).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli_helpers import cli_env
from conftest import Wire, open_user_wire, running_server
from tcpmq.broker import Broker
from tcpmq.config import Limits
from tcpmq.wire import encode_message_head, encode_timestamp, head_published_at

pytestmark = pytest.mark.every_store

QUEUE_KEYS = {
    *("name", "channel", "owner", "created_at", "ack_timeout", "depth", "inflight"),
    *("consumers", "oldest_age", "redeliveries"),
    *("overflow", "max_messages", "max_bytes", "dropped"),
}
# Server and test share one clock; this only absorbs slow CI machines.
CLOCK_SLACK = 30.0


def by_name(queues: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(q["channel"], q["name"]): q for q in queues}


async def queues_of(wire: Wire, **fields: Any) -> list[dict[str, Any]]:
    reply = await wire.ok("queue.list", **fields)
    assert set(reply) == {"ok", "queues"}
    for queue in reply["queues"]:
        assert set(queue) == QUEUE_KEYS, queue
    queues: list[dict[str, Any]] = reply["queues"]
    return queues


# --- queue.list without a channel -------------------------------------------


async def test_queue_list_of_every_channel_sorted_by_channel_then_name(
    alice: Wire, bob: Wire
) -> None:
    assert await queues_of(bob) == []
    await alice.ok("channel.create", name="b")
    await bob.ok("channel.create", name="a")
    await bob.ok("channel.create", name="empty")
    await alice.ok("subscribe", channel="b", queue="z")
    await bob.ok("subscribe", channel="b", queue="y")
    await alice.ok("subscribe", channel="a", queue="x")
    await alice.ok("publish", channel="b", messages=[1, 2])
    # Every authenticated user sees every queue, as with a channel.
    for wire in (alice, bob):
        queues = await queues_of(wire)
        assert [(q["channel"], q["name"], q["owner"]) for q in queues] == [
            ("a", "x", "alice"),
            ("b", "y", "bob"),
            ("b", "z", "alice"),
        ]
        assert [q["depth"] for q in queues] == [0, 2, 2]


async def test_queue_list_with_a_channel_has_the_same_fields(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("channel.create", name="d")
    await alice.ok("subscribe", channel="c")
    await alice.ok("subscribe", channel="d")
    await alice.ok("publish", channel="c", messages=[1, 2, 3])
    one = await queues_of(alice, channel="c")
    every = by_name(await queues_of(alice))
    assert [q["name"] for q in one] == ["alice"]
    for key in QUEUE_KEYS - {"oldest_age"}:
        assert one[0][key] == every[("c", "alice")][key]
    assert one[0]["oldest_age"] is not None and every[("d", "alice")]["oldest_age"] is None


async def test_queue_list_counts_ready_inflight_and_redeliveries(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    [queue] = await queues_of(alice)
    assert (queue["depth"], queue["inflight"], queue["redeliveries"]) == (0, 0, 0)
    assert (queue["consumers"], queue["oldest_age"]) == (0, None)
    await alice.ok("publish", channel="c", messages=[1, 2, 3, 4])
    await alice.ok("pull", channel="c", max=3)
    await alice.ok("nack", channel="c", ids=[1, 2])
    [queue] = await queues_of(alice)
    # 1 and 2 are ready again (delivered before), 3 in flight, 4 never delivered.
    assert (queue["depth"], queue["inflight"], queue["redeliveries"]) == (3, 1, 2)
    # Taken again, they are no longer waiting for a redelivery.
    await alice.ok("pull", channel="c", max=1)
    [queue] = await queues_of(alice)
    assert (queue["depth"], queue["inflight"], queue["redeliveries"]) == (2, 2, 1)


async def test_an_ack_timeout_makes_a_redelivery(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c", ack_timeout=0.1)
    await alice.ok("publish", channel="c", data="x")
    await alice.ok("pull", channel="c")
    # A long-poll ends when the message comes back from its ack timeout.
    [message] = (await alice.ok("pull", channel="c", wait=10))["messages"]
    assert message["attempt"] == 2
    await alice.ok("nack", channel="c", ids=[message["id"]])
    [queue] = await queues_of(alice)
    assert (queue["depth"], queue["redeliveries"]) == (1, 1)


async def test_oldest_age_covers_ready_and_inflight_messages(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    await alice.ok("publish", channel="c", data="first")
    [message] = (await alice.ok("pull", channel="c"))["messages"]
    [queue] = await queues_of(alice)
    # Only an in-flight message: it is the oldest.
    assert (queue["depth"], queue["inflight"]) == (0, 1)
    expected = time.time() - message["published_at"]
    assert queue["oldest_age"] >= 0 and abs(queue["oldest_age"] - expected) < CLOCK_SLACK
    await alice.ok("publish", channel="c", data="second")
    later = await queues_of(alice)
    assert later[0]["oldest_age"] >= queue["oldest_age"]
    await alice.ok("ack", channel="c", ids=[message["id"]])
    [queue] = await queues_of(alice)
    assert queue["oldest_age"] is not None  # "second" is ready
    await alice.ok("queue.purge", channel="c", queue="alice")
    [queue] = await queues_of(alice)
    assert queue["oldest_age"] is None


async def test_consumers_counts_the_pulls_waiting_on_the_queue(
    server: Any, alice: Wire, bob: Wire
) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    await alice.ok("subscribe", channel="c", queue="other")
    async with open_user_wire(server, "alice") as one, open_user_wire(server, "alice") as two:
        await one.send("pull", channel="c", wait=10, id="one")
        await two.send("pull", channel="c", wait=10, id="two")
        # The two pulls reach the server on their own connections: ask until they have.
        for _ in range(1000):
            queues = by_name(await queues_of(bob))
            if queues[("c", "alice")]["consumers"] == 2:
                break
        assert queues[("c", "alice")]["consumers"] == 2
        assert queues[("c", "other")]["consumers"] == 0
        # A pull without wait never parks, so it is not counted.
        assert (await alice.ok("pull", channel="c", queue="other"))["messages"] == []
        # Two messages: each waiting pull takes one (max 1) and is answered.
        await bob.ok("publish", channel="c", messages=["a", "b"])
        replies = [await one.recv(), await two.recv()]
        assert sorted(m["data"] for r in replies for m in r["messages"]) == ["a", "b"]
        queues = by_name(await queues_of(bob))
        assert queues[("c", "alice")]["consumers"] == 0


async def test_channel_depth_is_the_ready_messages_of_its_queues(alice: Wire, bob: Wire) -> None:
    created = (await alice.ok("channel.create", name="c"))["channel"]
    assert created["depth"] == 0
    await alice.ok("subscribe", channel="c")
    await bob.ok("subscribe", channel="c")
    await alice.ok("publish", channel="c", messages=[1, 2, 3])
    await alice.ok("pull", channel="c", max=2)
    [listed] = (await bob.ok("channel.list"))["channels"]
    assert listed["depth"] == 1 + 3
    got = (await bob.ok("channel.get", name="c"))["channel"]
    assert got["depth"] == 4
    assert sum(q["depth"] for q in got["queues"]) == 4
    for queue in got["queues"]:
        assert set(queue) == QUEUE_KEYS


async def test_subscribe_returns_the_same_queue_object(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    queue = (await alice.ok("subscribe", channel="c"))["queue"]
    assert set(queue) == QUEUE_KEYS
    assert (queue["consumers"], queue["oldest_age"], queue["redeliveries"]) == (0, None, 0)


# --- queue.purge -------------------------------------------------------------


async def test_purge_drops_ready_messages_and_keeps_inflight_ones(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    await alice.ok("subscribe", channel="c", queue="other")
    await alice.ok("publish", channel="c", messages=[1, 2, 3, 4, 5])
    await alice.ok("pull", channel="c", max=2)
    await alice.ok("nack", channel="c", ids=[2])
    reply = await alice.ok("queue.purge", channel="c", queue="alice")
    assert reply == {"ok": True, "purged": 4}
    queue = by_name(await queues_of(alice, channel="c"))[("c", "alice")]
    assert (queue["depth"], queue["inflight"], queue["redeliveries"]) == (0, 1, 0)
    # The in-flight message can still be acked; nothing else is delivered.
    assert (await alice.ok("pull", channel="c", max=10))["messages"] == []
    assert (await alice.ok("ack", channel="c", ids=[1]))["acked"] == 1
    # Other queues of the channel keep theirs; a purge of an empty queue drops none.
    other = (await alice.ok("pull", channel="c", queue="other", max=10))["messages"]
    assert [m["data"] for m in other] == [1, 2, 3, 4, 5]
    assert (await alice.ok("queue.purge", channel="c", queue="alice"))["purged"] == 0
    # New messages arrive as before.
    await alice.ok("publish", channel="c", data=6)
    [message] = (await alice.ok("pull", channel="c"))["messages"]
    assert (message["id"], message["data"]) == (6, 6)


async def test_purge_permissions(admin: Wire, alice: Wire, bob: Wire, server: Any) -> None:
    await alice.ok("channel.create", name="c")
    await bob.ok("subscribe", channel="c", queue="bq")
    await alice.ok("publish", channel="c", messages=[1, 2])
    async with open_user_wire(server, "admin") as other_admin:
        await admin.ok("user.create", name="carol", password="carol-password")
        async with open_user_wire(server, "carol") as carol:
            await carol.error("queue.purge", "forbidden", channel="c", queue="bq")
        # The queue's owner, the channel's owner and admins may.
        assert (await bob.ok("queue.purge", channel="c", queue="bq"))["purged"] == 2
        await alice.ok("publish", channel="c", data=3)
        assert (await alice.ok("queue.purge", channel="c", queue="bq"))["purged"] == 1
        await alice.ok("publish", channel="c", data=4)
        assert (await other_admin.ok("queue.purge", channel="c", queue="bq"))["purged"] == 1


async def test_purge_not_found_and_fields(alice: Wire) -> None:
    await alice.error("queue.purge", "not_found", channel="nowhere", queue="q")
    await alice.ok("channel.create", name="c")
    await alice.error("queue.purge", "not_found", channel="c", queue="q")
    error = await alice.error("queue.purge", "bad_request", channel="c")
    assert error["field"] == "queue"
    error = await alice.error("queue.purge", "bad_request", channel="c", queue="a b")
    assert error["field"] == "queue"


async def test_a_purge_survives_a_restart(tmp_path: Path, store: str) -> None:
    async with running_server(tmp_path / "data") as srv, open_user_wire(srv, "admin") as wire:
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c")
        await wire.ok("publish", channel="c", messages=[1, 2, 3, 4])
        await wire.ok("pull", channel="c")
        assert (await wire.ok("queue.purge", channel="c", queue="admin"))["purged"] == 3
        await wire.ok("publish", channel="c", data=5)
    if store == "memory":
        return  # nothing survives a restart
    async with running_server(tmp_path / "data") as srv, open_user_wire(srv, "admin") as wire:
        # The message in flight comes back; the purged ones do not. (A node of
        # the redis store keeps no state: what was in flight stays in flight.)
        messages = (await wire.ok("pull", channel="c", max=10))["messages"]
        back = [] if store == "redis" else [(1, 2)]
        assert [(m["id"], m["attempt"]) for m in messages] == [*back, (5, 1)]


# --- peek ------------------------------------------------------------------


async def test_peek_shows_ready_messages_in_pull_order_and_changes_nothing(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    assert await alice.ok("peek", channel="c") == {"ok": True, "messages": []}
    await alice.ok("publish", channel="c", messages=["a", "b", "c", "d"])
    await alice.ok("pull", channel="c", max=2)
    await alice.ok("nack", channel="c", ids=[2])
    before = await queues_of(alice)
    del before[0]["oldest_age"]  # the clock moves on
    peeked = (await alice.ok("peek", channel="c", max=10))["messages"]
    assert [(m["id"], m["data"], m["attempt"]) for m in peeked] == [
        (2, "b", 2),
        (3, "c", 1),
        (4, "d", 1),
    ]
    assert set(peeked[0]) == {"id", "data", "published_at", "publisher", "attempt"}
    assert peeked[0]["publisher"] == "alice"
    [after] = await queues_of(alice)
    assert after.pop("oldest_age") is not None and [after] == before
    assert [m["id"] for m in (await alice.ok("peek", channel="c", max=2))["messages"]] == [2, 3]
    assert [m["id"] for m in (await alice.ok("peek", channel="c"))["messages"]] == [2]
    # The next pull delivers what peek showed, with the attempts it said.
    pulled = (await alice.ok("pull", channel="c", max=10))["messages"]
    assert [(m["id"], m["attempt"]) for m in pulled] == [(2, 2), (3, 1), (4, 1)]


async def test_peek_does_not_disturb_a_waiting_pull(server: Any, alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    async with open_user_wire(server, "alice") as waiting:
        await waiting.send("pull", channel="c", wait=10)
        assert (await alice.ok("peek", channel="c"))["messages"] == []
        await alice.ok("publish", channel="c", data="x")
        assert [m["data"] for m in (await waiting.recv())["messages"]] == ["x"]


async def test_peek_permissions_and_fields(admin: Wire, alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    await alice.ok("publish", channel="c", data=1)
    await bob.error("peek", "forbidden", channel="c", queue="alice")
    assert len((await admin.ok("peek", channel="c", queue="alice"))["messages"]) == 1
    await alice.error("peek", "not_found", channel="nowhere")
    await bob.error("peek", "not_found", channel="c")  # bob has no queue there
    for bad in (0, 1001, "1", True):
        error = await alice.error("peek", "bad_request", channel="c", max=bad)
        assert error["field"] == "max"
    error = await alice.error("peek", "bad_request", channel="c", max=1001)
    assert (error["min"], error["max"]) == (1, 1000)
    await alice.error("peek", "bad_request", channel="c", wait=1)


async def test_peek_reply_is_capped_at_the_frame_size(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=4096) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c")
        for _ in range(5):
            await wire.ok("publish", channel="c", messages=["x" * 1000] * 2)
        messages = (await wire.ok("peek", channel="c", max=10))["messages"]
        assert 1 <= len(messages) < 10
        pulled = (await wire.ok("pull", channel="c", max=10))["messages"]
        assert len(pulled) == len(messages)


# --- the CLI -----------------------------------------------------------------


async def test_cli_queue_list_purge_and_peek(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        try:
            await client.channel_create("orders")
            await client.channel_create("audit")
            await client.subscribe("orders", "billing")
            await client.subscribe("audit", "log")
            await client.publish_batch("orders", [1, 2, 3])
        finally:
            await client.close()
        env = cli.as_admin()
        every = await cli.ok("queue", "list", env=env)
        header, *rows = every.lines
        assert header.split() == [
            *("CHANNEL", "QUEUE", "OWNER", "READY", "INFLIGHT"),
            *("REDELIVERIES", "OLDEST", "CONSUMERS", "ACK_TIMEOUT"),
        ]
        assert [row.split()[:5] for row in rows] == [
            ["audit", "log", "admin", "0", "0"],
            ["orders", "billing", "admin", "3", "0"],
        ]
        assert rows[0].split()[6] == "-"
        listed = orjson.loads((await cli.ok("queue", "list", "--json", env=env)).out)
        assert [(q["channel"], q["depth"]) for q in listed] == [("audit", 0), ("orders", 3)]
        # With a channel, the table it always had.
        one = await cli.ok("queue", "list", "orders", env=env)
        assert one.lines[0].split()[:2] == ["QUEUE", "OWNER"]
        peeked = await cli.ok("peek", "orders", "--queue", "billing", "--max", "2", env=env)
        assert peeked.lines == ["1  1", "2  2"]
        peeked = await cli.ok("peek", "orders", "--queue", "billing", "--json", env=env)
        assert orjson.loads(peeked.out)["attempt"] == 1
        purged = await cli.ok("queue", "purge", "orders", "billing", env=env)
        assert purged.out == "purged 3 ready messages of queue 'billing' of channel 'orders'\n"
        purged = await cli.ok("queue", "purge", "orders", "billing", "--json", env=env)
        assert orjson.loads(purged.out) == {"purged": 0}


# --- the core on its own ------------------------------------------------------


def head(message_id: int, published_at: float, data: object = "x") -> bytes:
    return encode_message_head(
        message_id, orjson.dumps(data), encode_timestamp(published_at), b'"alice"'
    )


@pytest.mark.parametrize(
    "data",
    ["plain", {"published_at": 5}, ',"published_at":7,"publisher":"x","attempt":', [1.5, "a,b"]],
    ids=repr,
)
def test_head_published_at_is_read_from_the_end(data: object) -> None:
    assert head_published_at(head(3, 1764355320.25, data)) == 1764355320.25


def test_oldest_is_the_lowest_id_held_ready_or_in_flight() -> None:
    broker = Broker(Limits())
    broker.create_channel("c", "alice", 0.0, public=False)
    queue, _ = broker.subscribe("c", "q", "alice", None, 0.0)
    assert queue.oldest() is None and queue.info(100.0)["oldest_age"] is None
    for published_at in (10.0, 20.0, 30.0):
        broker.publish("c", [b'"m"'], b'"alice"', published_at, 0.0, "alice", False)
    assert queue.info(100.0)["oldest_age"] == 90.0
    first, second = broker.pull(queue, 2, 0.0)
    # Both in flight, one ready: the oldest is in flight.
    assert queue.info(100.0)["oldest_age"] == 90.0
    broker.ack(queue, [first.id], 0.0)
    assert queue.info(100.0)["oldest_age"] == 80.0
    broker.nack(queue, [second.id], 0.0)
    assert queue.info(100.0)["oldest_age"] == 80.0
    assert queue.info(100.0)["redeliveries"] == 1
    # A clock behind the publish time gives 0, never a negative age.
    assert queue.info(0.0)["oldest_age"] == 0.0
    assert broker.purge(queue) == 2
    assert queue.info(100.0)["oldest_age"] is None
    assert (queue.depth, queue.held_bytes) == (0, 0)
