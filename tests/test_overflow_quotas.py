"""Overflow policies per queue and per-user quotas (protocol.md, Full queues and Limits).

A hostile user on default settings could block a channel's owner with one
never-consumed queue (a full queue refused every publish to its channel),
take every channel, or fill the memory budget with its own queues. These
tests show what stops each: foreign queues drop instead of rejecting, the
channel's owner may cap them, and quotas count per user, admins exempt.
Protocol behaviour over raw sockets; the client library's methods apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Wire, create_user, open_user_wire, running_server
from tcpmq.broker import Broker
from tcpmq.client import connect
from tcpmq.config import Limits
from tcpmq.errors import Forbidden
from tcpmq.server import Server

# A message of this data takes about 380 bytes as the server stores it
# (protocol.md, max_queue_bytes): two fit in 1000 bytes, three do not.
DATA = "x" * 300
QUOTA = 1000


@asynccontextmanager
async def users(
    tmp_path: Path, *names: str, **limits: Any
) -> AsyncIterator[tuple[Server, Wire, list[Wire]]]:
    """A server with `limits`, an admin's connection, and one connection per user in `names`."""
    async with (
        running_server(tmp_path / "data", **limits) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        for name in names:
            await create_user(admin, name)
        async with _wires(srv, list(names)) as wires:
            yield srv, admin, wires


@asynccontextmanager
async def _wires(srv: Server, names: list[str]) -> AsyncIterator[list[Wire]]:
    if not names:
        yield []
        return
    async with open_user_wire(srv, names[0]) as first, _wires(srv, names[1:]) as rest:
        yield [first, *rest]


async def queue_of(wire: Wire, channel: str, name: str) -> dict[str, Any]:
    queues = (await wire.ok("queue.list", channel=channel))["queues"]
    (queue,) = [q for q in queues if q["name"] == name]
    return queue


async def ready_data(wire: Wire, channel: str, queue: str) -> list[Any]:
    """The data of the queue's ready messages, in order (peek changes nothing)."""
    messages = (await wire.ok("peek", channel=channel, queue=queue, max=100))["messages"]
    return [message["data"] for message in messages]


def assert_limit(error: dict[str, Any], limit: str, maximum: int) -> None:
    assert (error["code"], error["limit"], error["max"]) == ("limit_exceeded", limit, maximum)


# -- overflow policies ----------------------------------------------------------


@pytest.mark.every_store
async def test_a_foreign_full_queue_no_longer_blocks_the_channel_owner(tmp_path: Path) -> None:
    async with users(tmp_path, "alice", "bob", max_queue_messages=3) as (_, _, [alice, bob]):
        await alice.ok("channel.create", name="c")
        mine = (await alice.ok("subscribe", channel="c", queue="mine"))["queue"]
        assert mine["overflow"] == "reject"
        spy = (await bob.ok("subscribe", channel="c", queue="spy"))["queue"]
        assert (spy["overflow"], spy["max_messages"], spy["dropped"]) == ("drop_oldest", 3, 0)
        # Bob never consumes; Alice consumes her own queue as she publishes.
        for n in range(1, 6):
            assert (await alice.ok("publish", channel="c", data=n))["queues"] == 2
            (message,) = (await alice.ok("pull", channel="c", queue="mine"))["messages"]
            assert message["data"] == n
            await alice.ok("ack", channel="c", queue="mine", ids=[message["id"]])
        spy = await queue_of(alice, "c", "spy")
        assert (spy["depth"], spy["dropped"]) == (3, 2)
        assert await ready_data(bob, "c", "spy") == [3, 4, 5]  # the oldest went


@pytest.mark.every_store
async def test_drop_new_keeps_the_oldest(tmp_path: Path) -> None:
    async with users(tmp_path, "alice", "bob", max_queue_messages=3) as (_, _, [alice, bob]):
        await alice.ok("channel.create", name="c")
        spy = (await bob.ok("subscribe", channel="c", queue="spy", overflow="drop_new"))["queue"]
        assert spy["overflow"] == "drop_new"
        for n in range(1, 6):
            await alice.ok("publish", channel="c", data=n)
        assert await ready_data(bob, "c", "spy") == [1, 2, 3]
        assert (await queue_of(bob, "c", "spy"))["dropped"] == 2


@pytest.mark.every_store
async def test_a_run_of_pipelined_publishes_drops_as_one_by_one(tmp_path: Path) -> None:
    # The server publishes a run of pipelined publishes as one batch; a
    # dropping queue still meets them message by message.
    async with users(tmp_path, "alice", "bob", max_queue_messages=3) as (_, _, [alice, bob]):
        await alice.ok("channel.create", name="c")
        await bob.ok("subscribe", channel="c", queue="old")
        await bob.ok("subscribe", channel="c", queue="new", overflow="drop_new")
        await alice.send_raw(
            b"".join(
                orjson.dumps({"op": "publish", "channel": "c", "data": n}) + b"\n"
                for n in range(1, 7)
            )
        )
        replies = [await alice.recv() for _ in range(6)]
        assert [reply["message_ids"] for reply in replies] == [[n] for n in range(1, 7)]
        await alice.ok("publish", channel="c", messages=[7, 8])
        assert await ready_data(bob, "c", "old") == [6, 7, 8]
        assert await ready_data(bob, "c", "new") == [1, 2, 3]
        assert (await queue_of(bob, "c", "old"))["dropped"] == 5


@pytest.mark.every_store
async def test_reject_on_the_owners_own_queue_still_refuses_whole(tmp_path: Path) -> None:
    async with users(tmp_path, "alice", "bob", max_queue_messages=2) as (_, _, [alice, bob]):
        await alice.ok("channel.create", name="c")
        mine = (await alice.ok("subscribe", channel="c", queue="mine"))["queue"]
        assert mine["overflow"] == "reject"
        await bob.ok("subscribe", channel="c", queue="spy", overflow="drop_new")
        await alice.ok("publish", channel="c", messages=[1, 2])
        error = await alice.error("publish", "limit_exceeded", channel="c", data=3)
        assert_limit(error, "max_queue_messages", 2)
        # Nothing was enqueued anywhere, nothing counted as dropped.
        spy = await queue_of(bob, "c", "spy")
        assert (spy["depth"], spy["dropped"]) == (2, 0)
        channel = (await alice.ok("channel.get", name="c"))["channel"]
        assert channel["published"] == 2


@pytest.mark.every_store
async def test_only_the_channel_owner_or_an_admin_may_set_reject(tmp_path: Path) -> None:
    async with users(tmp_path, "alice", "bob") as (_, admin, [alice, bob]):
        await alice.ok("channel.create", name="c")
        error = await bob.error(
            "subscribe", "forbidden", channel="c", queue="spy", overflow="reject"
        )
        assert "reject" in error["message"] and "'c'" in error["message"], error
        assert (await bob.ok("queue.list", channel="c"))["queues"] == []  # nothing created
        await bob.ok("subscribe", channel="c", queue="spy")
        await bob.error("queue.update", "forbidden", channel="c", queue="spy", overflow="reject")
        await bob.error("subscribe", "forbidden", channel="c", queue="spy", overflow="reject")
        # Its owner switches among the drop policies.
        reply = await bob.ok("queue.update", channel="c", queue="spy", overflow="drop_new")
        assert reply["queue"]["overflow"] == "drop_new"
        reply = await alice.ok("queue.update", channel="c", queue="spy", overflow="reject")
        assert reply["queue"]["overflow"] == "reject"
        # An admin's queue on Alice's channel rejects by default, as the owner's own.
        made = (await admin.ok("subscribe", channel="c", queue="ops"))["queue"]
        assert (made["owner"], made["overflow"]) == ("admin", "reject")


@pytest.mark.every_store
async def test_the_channel_owner_caps_a_foreign_queue(tmp_path: Path) -> None:
    async with users(tmp_path, "alice", "bob", "carol") as (_, _, [alice, bob, carol]):
        await alice.ok("channel.create", name="c")
        spy = (await bob.ok("subscribe", channel="c", queue="spy"))["queue"]
        assert (spy["max_messages"], spy["max_bytes"]) == (1_000_000, 256 * 1024 * 1024)
        await carol.error("queue.update", "forbidden", channel="c", queue="spy", max_messages=1)
        reply = await alice.ok("queue.update", channel="c", queue="spy", max_messages=2)
        assert reply["queue"]["max_messages"] == 2
        for n in range(1, 5):
            await alice.ok("publish", channel="c", data=n)
        assert await ready_data(bob, "c", "spy") == [3, 4]
        # A byte cap: one stored message is about 80 bytes more than its data.
        await alice.ok("queue.update", channel="c", queue="spy", max_bytes=400, max_messages=9)
        await alice.ok("publish", channel="c", data=DATA)
        spy = await queue_of(bob, "c", "spy")
        assert (spy["depth"], spy["max_messages"], spy["max_bytes"]) == (1, 9, 400)
        assert await ready_data(bob, "c", "spy") == [DATA]
        # The cap holds: its owner may lower it, not raise it (nor by subscribe).
        error = await bob.error(
            "queue.update", "forbidden", channel="c", queue="spy", max_bytes=401
        )
        assert "may raise max_bytes" in error["message"]
        await bob.error("subscribe", "forbidden", channel="c", queue="spy", max_messages=10)
        lowered = await bob.ok("queue.update", channel="c", queue="spy", max_messages=5)
        assert lowered["queue"]["max_messages"] == 5


@pytest.mark.every_store
async def test_drop_oldest_with_everything_in_flight_drops_the_new_message(
    tmp_path: Path,
) -> None:
    async with users(tmp_path, "alice", "bob") as (_, _, [alice, bob]):
        await alice.ok("channel.create", name="c")
        await bob.ok("subscribe", channel="c", queue="spy", max_messages=2)
        await alice.ok("publish", channel="c", messages=[1, 2])
        pulled = (await bob.ok("pull", channel="c", queue="spy", max=2))["messages"]
        assert [message["data"] for message in pulled] == [1, 2]
        await alice.ok("publish", channel="c", data=3)
        spy = await queue_of(bob, "c", "spy")
        assert (spy["depth"], spy["inflight"], spy["dropped"]) == (0, 2, 1)
        reply = await bob.ok("ack", channel="c", queue="spy", ids=[1, 2])
        assert reply["acked"] == 2  # in-flight messages are never dropped
        assert (await bob.ok("pull", channel="c", queue="spy"))["messages"] == []


@pytest.mark.parametrize("snapshot", [False, True], ids=["log", "snapshot"])
async def test_dropped_messages_do_not_come_back_after_a_restart(
    tmp_path: Path, snapshot: bool
) -> None:
    data = tmp_path / "data"
    async with running_server(data, max_queue_messages=3) as srv:
        async with open_user_wire(srv, "admin") as admin:
            await create_user(admin, "alice")
            await create_user(admin, "bob")
        async with open_user_wire(srv, "alice") as alice, open_user_wire(srv, "bob") as bob:
            await alice.ok("channel.create", name="c")
            await bob.ok("subscribe", channel="c", queue="old")
            await bob.ok("subscribe", channel="c", queue="new", overflow="drop_new")
            await alice.ok("queue.update", channel="c", queue="old", max_messages=2)
            await alice.ok("publish", channel="c", messages=[1, 2, 3])
            await alice.ok("publish", channel="c", messages=[4, 5])
            assert await ready_data(bob, "c", "old") == [4, 5]
            assert await ready_data(bob, "c", "new") == [1, 2, 3]
        if snapshot:
            await srv.store.compact()
    async with (
        running_server(data, max_queue_messages=3) as srv,
        open_user_wire(srv, "bob") as bob,
    ):
        assert await ready_data(bob, "c", "old") == [4, 5]
        assert await ready_data(bob, "c", "new") == [1, 2, 3]
        old = await queue_of(bob, "c", "old")
        new = await queue_of(bob, "c", "new")
        # Settings are kept; the drop count starts again with the server.
        assert (old["overflow"], old["max_messages"], old["dropped"]) == ("drop_oldest", 2, 0)
        assert (new["overflow"], new["max_messages"]) == ("drop_new", 3)


# -- per-user quotas -------------------------------------------------------------


async def test_max_channels_per_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with users(tmp_path, "alice", "bob", max_channels_per_user=2) as (_, admin, [alice, bob]):
        await alice.ok("channel.create", name="a1")
        await alice.ok("channel.create", name="a2")
        error = await alice.error("channel.create", "limit_exceeded", name="a3")
        assert_limit(error, "max_channels_per_user", 2)
        await bob.ok("channel.create", name="b1")  # every user has its own
        for name in ("x1", "x2", "x3"):
            await admin.ok("channel.create", name=name)  # admins are exempt
        await alice.ok("channel.delete", name="a1")
        await alice.ok("channel.create", name="a3")
    # Counted again from the store on a restart.
    async with (
        running_server(data, max_channels_per_user=2) as srv,
        open_user_wire(srv, "alice") as alice,
    ):
        error = await alice.error("channel.create", "limit_exceeded", name="a4")
        assert_limit(error, "max_channels_per_user", 2)


async def test_other_users_queues_cannot_lock_the_owner_out(tmp_path: Path) -> None:
    async with users(tmp_path, "alice", "bob", "carol", max_queues_per_channel=2) as (
        _,
        admin,
        [alice, bob, carol],
    ):
        await alice.ok("channel.create", name="open", access="public")
        await bob.ok("subscribe", channel="open")
        await bob.ok("subscribe", channel="open", queue="bob.x")
        error = await carol.error("subscribe", "limit_exceeded", channel="open")
        assert_limit(error, "max_queues_per_channel", 2)
        # The channel's owner and admins still subscribe.
        await alice.ok("subscribe", channel="open")
        await admin.ok("subscribe", channel="open")
        await alice.ok("publish", channel="open", data=1)
        assert (await queue_of(alice, "open", "alice"))["depth"] == 1


@pytest.mark.every_store
async def test_max_queued_bytes_per_user_counts_all_its_queues_and_rejects(
    tmp_path: Path,
) -> None:
    limits = {"max_queued_bytes_per_user": QUOTA}
    async with users(tmp_path, "alice", **limits) as (_, _, [alice]):
        await alice.ok("channel.create", name="c")
        await alice.ok("subscribe", channel="c", queue="a")
        await alice.ok("subscribe", channel="c", queue="b")
        await alice.ok("publish", channel="c", data=DATA)  # about 760 bytes in her two queues
        error = await alice.error("publish", "limit_exceeded", channel="c", data=DATA)
        assert_limit(error, "max_queued_bytes_per_user", QUOTA)
        assert [(await queue_of(alice, "c", q))["depth"] for q in "ab"] == [1, 1]
        for queue in "ab":
            (message,) = (await alice.ok("pull", channel="c", queue=queue))["messages"]
            await alice.ok("ack", channel="c", queue=queue, ids=[message["id"]])
        await alice.ok("publish", channel="c", data=DATA)  # acks gave the room back


@pytest.mark.every_store
@pytest.mark.parametrize(("overflow", "kept"), [("drop_oldest", [4, 5]), ("drop_new", [1, 2])])
async def test_a_queue_whose_owner_is_at_its_quota_drops(
    tmp_path: Path, overflow: str, kept: list[int]
) -> None:
    limits = {"max_queued_bytes_per_user": QUOTA}
    async with users(tmp_path, "alice", "bob", **limits) as (_, _, [alice, bob]):
        await alice.ok("channel.create", name="c")
        await bob.ok("subscribe", channel="c", queue="spy", overflow=overflow)
        for n in range(1, 6):
            await alice.ok("publish", channel="c", data=[n, DATA])
        messages = (await bob.ok("peek", channel="c", queue="spy", max=10))["messages"]
        assert [message["data"][0] for message in messages] == kept
        assert (await queue_of(bob, "c", "spy"))["dropped"] == 3


async def test_admins_are_exempt_from_the_quotas(tmp_path: Path) -> None:
    data = tmp_path / "data"
    limits = {
        "max_queued_bytes_per_user": QUOTA,
        "max_queues_per_user": 1,
        "max_channels_per_user": 1,
    }
    async with users(tmp_path, "alice", **limits) as (srv, admin, [alice]):
        await alice.ok("channel.create", name="a")
        error = await alice.error("channel.create", "limit_exceeded", name="a2")
        assert_limit(error, "max_channels_per_user", 1)
        await alice.ok("subscribe", channel="a", queue="q1")
        error = await alice.error("subscribe", "limit_exceeded", channel="a", queue="q2")
        assert_limit(error, "max_queues_per_user", 1)
        await admin.ok("channel.create", name="x")
        await admin.ok("channel.create", name="y")
        await admin.ok("subscribe", channel="x", queue="q1")
        await admin.ok("subscribe", channel="x", queue="q2")
        for _ in range(3):
            await admin.ok("publish", channel="x", data=DATA)
        # An admin created later is exempt at once.
        await create_user(admin, "ops", role="admin")
        async with open_user_wire(srv, "ops") as ops:
            await ops.ok("channel.create", name="o")
            await ops.ok("channel.create", name="o2")
            await ops.ok("subscribe", channel="o")
            for _ in range(3):
                await ops.ok("publish", channel="o", data=DATA)
    # And still after a restart: the server tells the broker who the admins are.
    async with (
        running_server(data, **limits) as srv,
        open_user_wire(srv, "admin") as admin,
        open_user_wire(srv, "ops") as ops,
    ):
        await admin.ok("publish", channel="x", data=DATA)
        assert (await queue_of(admin, "x", "q1"))["depth"] == 4
        await ops.ok("publish", channel="o", data=DATA)
        assert (await queue_of(ops, "o", "ops"))["depth"] == 4


# -- bad values ------------------------------------------------------------------


@pytest.mark.every_store
@pytest.mark.parametrize("op", ["subscribe", "queue.update"])
async def test_bad_settings_are_bad_requests_naming_the_field(tmp_path: Path, op: str) -> None:
    limits = {"max_queue_messages": 10, "max_queue_bytes": 10_000}
    async with users(tmp_path, "alice", **limits) as (_, _, [alice]):
        await alice.ok("channel.create", name="c")
        await alice.ok("subscribe", channel="c", queue="q")
        cases: list[tuple[dict[str, Any], str, dict[str, int]]] = [
            ({"overflow": "x"}, "overflow", {}),
            ({"overflow": 1}, "overflow", {}),
            ({"max_messages": 0}, "max_messages", {"min": 1}),
            ({"max_messages": 11}, "max_messages", {"min": 1, "max": 10}),
            ({"max_messages": "5"}, "max_messages", {}),
            ({"max_bytes": 0}, "max_bytes", {"min": 1}),
            ({"max_bytes": 10_001}, "max_bytes", {"min": 1, "max": 10_000}),
        ]
        for fields, field, bounds in cases:
            error = await alice.error(op, "bad_request", channel="c", queue="q", **fields)
            assert error["field"] == field, (fields, error)
            assert {k: error[k] for k in bounds} == bounds, (fields, error)
        queue = await queue_of(alice, "c", "q")  # unchanged
        assert (queue["overflow"], queue["max_messages"], queue["max_bytes"]) == (
            "reject",
            10,
            10_000,
        )


# -- the client library ------------------------------------------------------------


async def test_the_client_sets_and_updates_queue_settings(server: Server) -> None:
    url = f"tcpmq://{server.host}:{server.port}"
    async with connect(url, token=server.mint_token("admin")) as admin:
        await admin.user_create("alice", "alice-passw0rd")
        await admin.user_create("bob", "bob-passw0rd")
    async with (
        connect(url, token=server.mint_token("alice")) as alice,
        connect(url, token=server.mint_token("bob")) as bob,
    ):
        await alice.channel_create("c")
        with pytest.raises(Forbidden):
            await bob.subscribe("c", "spy", overflow="reject")
        made = await bob.subscribe("c", "spy", overflow="drop_new", max_messages=5, max_bytes=4096)
        assert made.created
        assert (made.queue.overflow, made.queue.max_messages, made.queue.max_bytes) == (
            "drop_new",
            5,
            4096,
        )
        capped = await alice.queue_update("c", "spy", overflow="reject", max_messages=1)
        assert (capped.overflow, capped.max_messages, capped.max_bytes) == ("reject", 1, 4096)
        await bob.queue_update("c", "spy", overflow="drop_oldest")
        await alice.publish_batch("c", ["a", "b", "c"])
        (queue,) = await alice.queue_list("c")
        assert (queue.overflow, queue.depth, queue.dropped) == ("drop_oldest", 1, 2)
        assert [message.data for message in await bob.peek("c", "spy", max=5)] == ["c"]


# -- the accounting, on the broker alone --------------------------------------------


def test_drops_give_back_every_byte_and_the_memory_they_were_charged() -> None:
    broker = Broker(Limits(max_queue_messages=3, max_queued_bytes_per_user=2000))
    broker.create_channel("ch", "alice", 0.0, public=True)
    mine, _ = broker.subscribe("ch", "mine", "alice", None, 0.0, overflow="drop_new")
    old, _ = broker.subscribe("ch", "old", "bob", None, 0.0)
    new, _ = broker.subscribe("ch", "new", "bob", None, 0.0, overflow="drop_new")
    publisher = orjson.dumps("alice")
    for n in range(12):
        datas = [orjson.dumps([n, i, "y" * 100 * i]) for i in range(1 + n % 3)]
        broker.publish("ch", datas, publisher, 1.0, 0.0, "alice", False)
        if n % 4 == 0:  # something in flight and something back to ready
            broker.nack(old, [entry.id for entry in broker.pull(old, 1, 0.0)], 0.0)
            broker.pull(new, 1, 0.0)
    assert old.dropped and new.dropped and mine.dropped
    bob = broker.accounts["bob"]
    assert bob.held_bytes == old.held_bytes + new.held_bytes <= 2000
    for queue in (old, new):
        assert queue.held_bytes == sum(map(len, queue.held()))
    memory = broker.memory
    broker.recount()  # counts from what the queues hold, with today's fan-out
    assert broker.memory == pytest.approx(memory)
    bob = broker.accounts["bob"]
    assert bob.held_bytes == old.held_bytes + new.held_bytes
    for queue in (mine, old, new):
        broker.ack(queue, [entry.id for entry in broker.pull(queue, 10, 0.0)], 0.0)
        broker.ack(queue, [entry.id for entry in queue.entries()], 0.0)
        broker.purge(queue)
        assert (queue.held_bytes, queue.depth, queue.inflight_count) == (0, 0, 0)
    assert bob.held_bytes == broker.accounts["alice"].held_bytes == 0
    assert broker.memory == pytest.approx(0.0, abs=1e-6)
