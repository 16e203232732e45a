"""Whole scenarios over real sockets: the ten operations of the issue as one
script, fan-out, competing consumers, ordering, long-polls, redelivery,
permissions and many concurrent clients.

No test sleeps: a reply arriving is the synchronisation. Where a test must
know that a pull is already waiting before it publishes, it sends a `ping`
in the same write as the pull and waits for the ping's reply, then checks
that the pull has not been answered yet.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import (
    ADMIN_PASSWORD,
    Wire,
    create_user,
    expect_error,
    open_raw,
    open_user_wire,
    open_wire,
    running_server,
)
from tcpmq.server import Server

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]

# How long a reply that should come at once may take on a slow machine.
PROMPT = 5.0
# How long a waiting pull is given to show that it really waits.
STILL_WAITING = 0.1


def assert_subset(expected: Any, actual: Any, path: str = "") -> None:
    """`actual` has every key of `expected` with an equal value; lists match item by item."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), (path, actual)
        for key, value in expected.items():
            assert key in actual, (f"{path}.{key}", actual)
            assert_subset(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (path, actual)
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            assert_subset(want, got, f"{path}.{i}")
    else:
        assert actual == expected, (path, actual)


async def start_waiting_pull(wire: Wire, request_id: str, **fields: Any) -> None:
    """Send a long-polling pull and return once the server is holding it."""
    await wire.send_raw(
        orjson.dumps({"op": "ping", "id": f"{request_id}-ping"})
        + b"\n"
        + orjson.dumps({"op": "pull", "id": request_id, **fields})
        + b"\n"
    )
    assert await wire.recv() == {"ok": True, "id": f"{request_id}-ping"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(wire.reader.readline(), STILL_WAITING)


async def prompt_reply(wire: Wire) -> dict[str, Any]:
    return await asyncio.wait_for(wire.recv(), PROMPT)


# --- the ten operations as one script ---------------------------------------

ORDER = {"order": 1234, "total": "19.90", "lines": [{"sku": "a-1", "qty": 2}]}

# (line sent, subset of the reply expected). Written as an `nc` user would type it.
SCRIPT: list[tuple[bytes, dict[str, Any]]] = [
    (
        b'{"op":"login","user":"admin","password":"' + ADMIN_PASSWORD.encode() + b'","id":0}',
        {"ok": True, "id": 0, "user": "admin", "role": "admin"},
    ),
    # 1. create a user
    (
        b'{"op":"user.create","name":"alice","password":"correct horse","id":1}',
        {"ok": True, "id": 1, "user": {"name": "alice", "role": "user"}},
    ),
    (
        b'{"op":"user.create","name":"temp","password":"temporary","role":"admin"}',
        {"ok": True, "user": {"name": "temp", "role": "admin"}},
    ),
    # 2. list users, get one
    (
        b'{"op":"user.list","id":2}',
        {
            "ok": True,
            "users": [
                {"name": "admin", "role": "admin"},
                {"name": "alice", "role": "user"},
                {"name": "temp", "role": "admin"},
            ],
        },
    ),
    (b'{"op":"user.get","name":"alice"}', {"ok": True, "user": {"name": "alice"}}),
    # 3. delete a user
    (b'{"op":"user.delete","name":"temp","id":3}', {"ok": True, "id": 3}),
    (b'{"op":"user.get","name":"temp"}', {"ok": False, "error": {"code": "not_found"}}),
    # 4. create channels
    (
        b'{"op":"channel.create","name":"orders","id":4}',
        {
            "ok": True,
            "id": 4,
            "channel": {"name": "orders", "owner": "admin", "published": 0, "queue_count": 0},
        },
    ),
    (b'{"op":"channel.create","name":"scratch"}', {"ok": True, "channel": {"name": "scratch"}}),
    # 5. list channels, get one
    (
        b'{"op":"channel.list","id":5}',
        {"ok": True, "channels": [{"name": "orders"}, {"name": "scratch"}]},
    ),
    (
        b'{"op":"channel.get","name":"orders"}',
        {"ok": True, "channel": {"name": "orders", "queue_count": 0, "queues": []}},
    ),
    # 6. delete a channel
    (b'{"op":"channel.delete","name":"scratch","id":6}', {"ok": True, "id": 6}),
    (b'{"op":"channel.list"}', {"ok": True, "channels": [{"name": "orders"}]}),
    # 7. subscribe
    (
        b'{"op":"subscribe","channel":"orders","queue":"billing","ack_timeout":60,"id":7}',
        {
            "ok": True,
            "id": 7,
            "created": True,
            "queue": {"name": "billing", "channel": "orders", "owner": "admin", "ack_timeout": 60},
        },
    ),
    (
        b'{"op":"subscribe","channel":"orders","queue":"shipping"}',
        {"ok": True, "created": True, "queue": {"name": "shipping", "ack_timeout": 30}},
    ),
    (
        b'{"op":"subscribe","channel":"orders","queue":"audit"}',
        {"ok": True, "created": True, "queue": {"name": "audit"}},
    ),
    # 8. list queues
    (
        b'{"op":"queue.list","channel":"orders","id":8}',
        {
            "ok": True,
            "id": 8,
            "queues": [{"name": "audit"}, {"name": "billing"}, {"name": "shipping"}],
        },
    ),
    # 9. delete a queue
    (b'{"op":"queue.delete","channel":"orders","queue":"audit","id":9}', {"ok": True, "id": 9}),
    (
        b'{"op":"queue.list","channel":"orders"}',
        {"ok": True, "queues": [{"name": "billing"}, {"name": "shipping"}]},
    ),
    # 10. publish: the message lands in every queue
    (
        b'{"op":"publish","channel":"orders","data":' + orjson.dumps(ORDER) + b',"id":10}',
        {"ok": True, "id": 10, "message_ids": [1], "queues": 2},
    ),
    (
        b'{"op":"publish","channel":"orders","messages":["a","b",3]}',
        {"ok": True, "message_ids": [2, 3, 4], "queues": 2},
    ),
    (
        b'{"op":"channel.get","name":"orders"}',
        {
            "ok": True,
            "channel": {
                "published": 4,
                "queue_count": 2,
                "queues": [
                    {"name": "billing", "depth": 4, "inflight": 0},
                    {"name": "shipping", "depth": 4, "inflight": 0},
                ],
            },
        },
    ),
    (
        b'{"op":"pull","channel":"orders","queue":"billing","max":10}',
        {
            "ok": True,
            "messages": [
                {"id": 1, "data": ORDER, "publisher": "admin", "attempt": 1},
                {"id": 2, "data": "a"},
                {"id": 3, "data": "b"},
                {"id": 4, "data": 3},
            ],
        },
    ),
    (
        b'{"op":"pull","channel":"orders","queue":"shipping"}',
        {"ok": True, "messages": [{"id": 1, "data": ORDER, "publisher": "admin", "attempt": 1}]},
    ),
    (
        b'{"op":"ack","channel":"orders","queue":"billing","ids":[1,2,3,4]}',
        {"ok": True, "acked": 4, "unknown": []},
    ),
    (
        b'{"op":"ack","channel":"orders","queue":"shipping","ids":[1,2]}',
        {"ok": True, "acked": 1, "unknown": [2]},
    ),
    (
        b'{"op":"queue.list","channel":"orders"}',
        {
            "ok": True,
            "queues": [
                {"name": "billing", "depth": 0, "inflight": 0},
                {"name": "shipping", "depth": 3, "inflight": 0},
            ],
        },
    ),
    (
        b'{"op":"nonsense"}',
        {"ok": False, "error": {"code": "unknown_op"}},
    ),
]


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-by-one", "pipelined"])
async def test_the_ten_operations_as_one_script(server: Server, pipelined: bool) -> None:
    reader, writer = await open_raw("127.0.0.1", server.port)
    wire = Wire(reader, writer)
    try:
        assert_subset({"event": "hello", "server": "tcpmq", "protocol": 1}, await wire.recv())
        # Before login only ping/auth/login work.
        await wire.send_raw(b'{"op":"channel.list"}\n')
        expect_error(await wire.recv(), "unauthenticated")
        if pipelined:
            await wire.send_raw(b"".join(line + b"\n" for line, _ in SCRIPT))
            for line, expected in SCRIPT:
                reply = await wire.recv()
                assert_subset(expected, reply)
                assert ("id" in reply) == (b'"id":' in line), (line, reply)
        else:
            for line, expected in SCRIPT:
                await wire.send_raw(line + b"\n")
                reply = await wire.recv()
                assert_subset(expected, reply)
                assert ("id" in reply) == (b'"id":' in line), (line, reply)
        # The user made in the script can log in on a connection of its own.
        async with open_wire(server) as other:
            await other.ok("login", user="alice", password="correct horse")
            assert (await other.ok("channel.list"))["channels"][0]["name"] == "orders"
    finally:
        await wire.close()


# --- fan-out ----------------------------------------------------------------


async def test_fan_out_to_eight_queues(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="fan")
    queues = [f"q{i}" for i in range(8)]
    for i, queue in enumerate(queues):
        await (alice if i % 2 else bob).ok("subscribe", channel="fan", queue=queue)
    sent: list[Any] = []
    for i in range(30):
        data = {"n": i, "text": f"message {i}"}
        reply = await alice.ok("publish", channel="fan", data=data)
        assert reply["queues"] == 8 and reply["message_ids"] == [i + 1]
        sent.append(data)
    batch = [[i, "batch"] for i in range(20)]
    reply = await bob.ok("publish", channel="fan", messages=batch)
    assert reply == {"ok": True, "message_ids": list(range(31, 51)), "queues": 8}
    sent.extend(batch)
    for i, queue in enumerate(queues):
        owner = alice if i % 2 else bob
        messages = (await owner.ok("pull", channel="fan", queue=queue, max=1000))["messages"]
        assert [m["id"] for m in messages] == list(range(1, 51)), queue
        assert [m["data"] for m in messages] == sent, queue
        assert [m["publisher"] for m in messages] == ["alice"] * 30 + ["bob"] * 20
        assert all(m["attempt"] == 1 for m in messages)
    channel = (await alice.ok("channel.get", name="fan"))["channel"]
    assert channel["published"] == 50
    assert [(q["depth"], q["inflight"]) for q in channel["queues"]] == [(0, 50)] * 8


# --- competing consumers ----------------------------------------------------


async def test_competing_consumers_drain_a_queue_exactly_once(server: Server, alice: Wire) -> None:
    await alice.ok("channel.create", name="work")
    await alice.ok("subscribe", channel="work")
    await alice.ok("publish", channel="work", messages=[f"job {i}" for i in range(1, 301)])

    async def consume() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with open_user_wire(server, "alice") as wire:
            while messages := (await wire.ok("pull", channel="work", max=7))["messages"]:
                got.extend(messages)
                await wire.ok("ack", channel="work", ids=[m["id"] for m in messages])
        return got

    results = await asyncio.gather(consume(), consume(), consume())
    everything = [m for got in results for m in got]
    assert sorted(m["id"] for m in everything) == list(range(1, 301))
    assert all(m["data"] == f"job {m['id']}" and m["attempt"] == 1 for m in everything)
    for got in results:
        ids = [m["id"] for m in got]
        assert ids == sorted(ids)
    [queue] = (await alice.ok("queue.list", channel="work"))["queues"]
    assert (queue["depth"], queue["inflight"]) == (0, 0)


async def test_competing_long_polling_consumers_while_publishing(
    server: Server, alice: Wire
) -> None:
    total = 200
    await alice.ok("channel.create", name="live")
    await alice.ok("subscribe", channel="live")

    async def consume() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with open_user_wire(server, "alice") as wire:
            while True:
                messages = (await wire.ok("pull", channel="live", max=10, wait=5))["messages"]
                work = [m for m in messages if m["data"] != "stop"]
                stops = [m["id"] for m in messages if m["data"] == "stop"]
                got.extend(work)
                # Keep one stop; hand any other back to the consumers still running.
                await wire.ok("ack", channel="live", ids=[m["id"] for m in work] + stops[:1])
                if len(stops) > 1:
                    await wire.ok("nack", channel="live", ids=stops[1:])
                if stops:
                    return got

    async def publish() -> None:
        async with open_user_wire(server, "alice") as wire:
            n = 1
            while n <= total:
                if n % 3:
                    await wire.ok("publish", channel="live", data=n)
                    n += 1
                else:
                    batch = list(range(n, min(n + 7, total + 1)))
                    await wire.ok("publish", channel="live", messages=batch)
                    n += len(batch)
            await wire.ok("publish", channel="live", messages=["stop"] * 3)

    *results, _ = await asyncio.gather(consume(), consume(), consume(), publish())
    everything = [m for got in results for m in got]
    assert sorted(m["id"] for m in everything) == list(range(1, total + 1))
    assert all(m["data"] == m["id"] and m["attempt"] == 1 for m in everything)
    for got in results:
        ids = [m["id"] for m in got]
        assert ids == sorted(ids)
    [queue] = (await alice.ok("queue.list", channel="live"))["queues"]
    assert (queue["depth"], queue["inflight"]) == (0, 0)


# --- ordering ---------------------------------------------------------------


async def test_order_over_1000_messages_with_nacks_in_the_middle(alice: Wire) -> None:
    await alice.ok("channel.create", name="seq")
    await alice.ok("subscribe", channel="seq")
    reply = await alice.ok("publish", channel="seq", messages=list(range(1, 501)))
    assert reply["message_ids"] == list(range(1, 501))
    for start in range(501, 1001, 100):
        batch = list(range(start, start + 100))
        assert (await alice.ok("publish", channel="seq", messages=batch))["message_ids"] == batch

    delivered: list[tuple[int, int]] = []
    nacked = {420, 450, 499}
    while messages := (await alice.ok("pull", channel="seq", max=100))["messages"]:
        assert all(m["data"] == m["id"] for m in messages)
        delivered.extend((m["id"], m["attempt"]) for m in messages)
        ids = [m["id"] for m in messages]
        if 450 in ids and messages[0]["attempt"] == 1:
            back = [i for i in ids if i in nacked]
            assert (await alice.ok("nack", channel="seq", ids=back))["requeued"] == 3
            ids = [i for i in ids if i not in nacked]
        assert (await alice.ok("ack", channel="seq", ids=ids))["acked"] == len(ids)

    first_pass = [(i, 1) for i in range(1, 501)]
    retries = [(420, 2), (450, 2), (499, 2)]
    # The nacked messages take their place by id again, ahead of 501.
    assert delivered == first_pass + retries + [(i, 1) for i in range(501, 1001)]
    [queue] = (await alice.ok("queue.list", channel="seq"))["queues"]
    assert (queue["depth"], queue["inflight"]) == (0, 0)


# --- long-polls -------------------------------------------------------------


async def test_long_poll_wakes_up_on_publish(server: Server, alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    await start_waiting_pull(alice, "wait", channel="lp", max=5, wait=30)
    await bob.ok("publish", channel="lp", data={"wake": "up"})
    reply = await prompt_reply(alice)
    assert reply["ok"] is True and reply["id"] == "wait"
    [message] = reply["messages"]
    assert message["id"] == 1 and message["data"] == {"wake": "up"}
    assert message["publisher"] == "bob" and message["attempt"] == 1
    # A batch publish wakes the next waiting pull with all of it.
    await start_waiting_pull(alice, "wait2", channel="lp", max=5, wait=30)
    await bob.ok("publish", channel="lp", messages=["x", "y", "z"])
    reply = await prompt_reply(alice)
    assert [m["data"] for m in reply["messages"]] == ["x", "y", "z"]


async def test_waiting_pulls_are_served_in_the_order_they_started(
    server: Server, alice: Wire, bob: Wire
) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    async with (
        open_user_wire(server, "alice") as first,
        open_user_wire(server, "alice") as second,
    ):
        await start_waiting_pull(first, "first", channel="lp", wait=30)
        await start_waiting_pull(second, "second", channel="lp", wait=30)
        await bob.ok("publish", channel="lp", data="one")
        reply = await prompt_reply(first)
        assert [m["data"] for m in reply["messages"]] == ["one"]
        await bob.ok("publish", channel="lp", data="two")
        reply = await prompt_reply(second)
        assert [m["data"] for m in reply["messages"]] == ["two"]


async def test_long_poll_times_out_with_an_empty_list(alice: Wire) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await alice.ok("pull", channel="lp", max=10, wait=0.2, id="t")
    assert reply == {"ok": True, "id": "t", "messages": []}
    # It did wait (a lower bound only; nothing here is timed from above).
    assert loop.time() - started >= 0.15


async def test_waiting_pulls_end_at_once_when_the_client_stops_sending(
    server: Server, alice: Wire
) -> None:
    await alice.ok("channel.create", name="eof")
    await alice.ok("subscribe", channel="eof")
    async with open_user_wire(server, "alice") as leaving:
        lines = [
            b'{"op":"pull","channel":"eof","wait":300,"id":1}',
            b'{"op":"pull","channel":"eof","wait":300,"id":2}',
            b'{"op":"ping","id":3}',
        ]
        await leaving.send_raw(b"\n".join(lines) + b"\n")
        await alice.ok("ping")  # the waiting pull is parked by now
        leaving.writer.write_eof()
        # Answered with what is ready (nothing), not after 300 s, then closed.
        replies = [await asyncio.wait_for(leaving.recv(), PROMPT) for _ in range(3)]
        assert replies == [
            {"ok": True, "id": 1, "messages": []},
            {"ok": True, "id": 2, "messages": []},
            {"ok": True, "id": 3},
        ]
        assert await leaving.closed()
    # A message published now is not swallowed by a pull nobody reads.
    await alice.ok("publish", channel="eof", data="kept")
    [message] = (await alice.ok("pull", channel="eof"))["messages"]
    assert (message["data"], message["attempt"]) == ("kept", 1)


@pytest.mark.parametrize("deleting", ["queue.delete", "channel.delete"])
async def test_waiting_pull_gets_not_found_when_its_queue_goes(
    server: Server, alice: Wire, deleting: str
) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    async with open_user_wire(server, "alice") as consumer:
        await start_waiting_pull(consumer, "doomed", channel="lp", wait=30)
        if deleting == "queue.delete":
            await alice.ok("queue.delete", channel="lp", queue="alice")
        else:
            await alice.ok("channel.delete", name="lp")
        reply = await prompt_reply(consumer)
        expect_error(reply, "not_found")
        assert reply["id"] == "doomed"
        # The connection goes on.
        assert await consumer.call("ping", id=1) == {"ok": True, "id": 1}


async def test_waiting_pull_gets_not_found_when_the_queue_owner_is_deleted(
    server: Server, admin: Wire, alice: Wire
) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    async with open_user_wire(server, "admin") as consumer:
        # An admin long-polls alice's queue; deleting alice deletes the queue.
        await start_waiting_pull(consumer, "doomed", channel="lp", queue="alice", wait=30)
        await admin.ok("user.delete", name="alice")
        reply = await prompt_reply(consumer)
        expect_error(reply, "not_found")
        assert reply["id"] == "doomed"
        assert (await consumer.ok("channel.get", name="lp"))["channel"]["queue_count"] == 0


async def test_a_request_behind_a_waiting_pull_ends_the_wait(alice: Wire) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    await start_waiting_pull(alice, "wait", channel="lp", wait=30)
    # The ping is not held for 30 s: the pull answers with what is ready (nothing), then it.
    await alice.send_raw(b'{"op":"ping","id":"behind"}\n')
    assert await prompt_reply(alice) == {"ok": True, "id": "wait", "messages": []}
    assert await prompt_reply(alice) == {"ok": True, "id": "behind"}
    # So does a bad line: it is answered at once too.
    await start_waiting_pull(alice, "again", channel="lp", wait=30)
    await alice.send_raw(b"{nonsense\n")
    assert await prompt_reply(alice) == {"ok": True, "id": "again", "messages": []}
    expect_error(await prompt_reply(alice), "bad_json")


async def test_an_ack_behind_a_waiting_pull_waits_in_turn(alice: Wire) -> None:
    # A consumer acks batches while its next pulls wait: its acks must not
    # turn each of those pulls into an empty reply.
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    await alice.ok("publish", channel="lp", data=1)
    [message] = (await alice.ok("pull", channel="lp"))["messages"]
    await start_waiting_pull(alice, "wait", channel="lp", wait=0.5)
    await alice.send("ack", channel="lp", ids=[message["id"]], id="ack")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(alice.reader.readline(), STILL_WAITING)
    assert await prompt_reply(alice) == {"ok": True, "id": "wait", "messages": []}
    assert await prompt_reply(alice) == {"ok": True, "id": "ack", "acked": 1, "unknown": []}


async def test_pulls_behind_a_waiting_pull_wait_in_turn(server: Server, alice: Wire) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    await start_waiting_pull(alice, "first", channel="lp", wait=30)
    await alice.send_raw(b'{"op":"pull","channel":"lp","wait":30,"id":"second"}\n')
    async with open_user_wire(server, "alice") as publisher:
        await publisher.ok("publish", channel="lp", data=1)
        first = await prompt_reply(alice)
        assert first["id"] == "first" and [m["data"] for m in first["messages"]] == [1]
        await publisher.ok("publish", channel="lp", data=2)
    second = await prompt_reply(alice)
    assert second["id"] == "second" and [m["data"] for m in second["messages"]] == [2]


# --- redelivery -------------------------------------------------------------


async def test_redelivery_after_ack_timeout(alice: Wire) -> None:
    await alice.ok("channel.create", name="rd")
    reply = await alice.ok("subscribe", channel="rd", ack_timeout=0.2)
    assert reply["queue"]["ack_timeout"] == 0.2
    await alice.ok("publish", channel="rd", data="again")
    [first] = (await alice.ok("pull", channel="rd"))["messages"]
    assert (first["id"], first["attempt"]) == (1, 1)
    # Not acked: the ack timeout makes it ready again and wakes this pull.
    reply = await asyncio.wait_for(alice.ok("pull", channel="rd", max=5, wait=3), PROMPT)
    [second] = reply["messages"]
    assert (second["id"], second["attempt"], second["data"]) == (1, 2, "again")
    assert second["published_at"] == first["published_at"]
    assert (await alice.ok("ack", channel="rd", ids=[1]))["acked"] == 1
    # Acked for good: nothing comes back, even after more than the ack timeout.
    assert (await alice.ok("pull", channel="rd", max=5, wait=0.5))["messages"] == []
    [queue] = (await alice.ok("queue.list", channel="rd"))["queues"]
    assert (queue["depth"], queue["inflight"]) == (0, 0)


async def test_ack_after_the_ack_timeout_is_unknown(alice: Wire) -> None:
    await alice.ok("channel.create", name="rd")
    await alice.ok("subscribe", channel="rd", ack_timeout=0.2)
    await alice.ok("channel.create", name="idle")
    await alice.ok("subscribe", channel="idle")
    await alice.ok("publish", channel="rd", data="late")
    await alice.ok("pull", channel="rd")
    # Let the ack timeout pass by waiting on the server: an empty pull elsewhere.
    assert (await alice.ok("pull", channel="idle", wait=0.5))["messages"] == []
    reply = await alice.ok("ack", channel="rd", ids=[1])
    assert reply == {"ok": True, "acked": 0, "unknown": [1]}
    [again] = (await alice.ok("pull", channel="rd"))["messages"]
    assert (again["id"], again["attempt"]) == (1, 2)


async def test_ack_timeout_applies_to_deliveries_made_after_it_is_set(alice: Wire) -> None:
    await alice.ok("channel.create", name="rd")
    await alice.ok("subscribe", channel="rd", ack_timeout=60)
    await alice.ok("publish", channel="rd", messages=["early", "late"])
    [early] = (await alice.ok("pull", channel="rd"))["messages"]
    reply = await alice.ok("subscribe", channel="rd", ack_timeout=0.2)
    assert reply["created"] is False and reply["queue"]["ack_timeout"] == 0.2
    [late] = (await alice.ok("pull", channel="rd"))["messages"]
    assert (early["data"], late["data"]) == ("early", "late")
    # Only the delivery made under the short timeout comes back.
    reply = await asyncio.wait_for(alice.ok("pull", channel="rd", max=5, wait=3), PROMPT)
    assert [(m["id"], m["attempt"]) for m in reply["messages"]] == [(2, 2)]
    [queue] = (await alice.ok("queue.list", channel="rd"))["queues"]
    assert (queue["depth"], queue["inflight"]) == (0, 2)
    assert (await alice.ok("ack", channel="rd", ids=[1, 2]))["acked"] == 2


async def test_closing_the_connection_does_not_requeue(server: Server, alice: Wire) -> None:
    await alice.ok("channel.create", name="rd")
    await alice.ok("subscribe", channel="rd", ack_timeout=1)
    await alice.ok("publish", channel="rd", data="held")
    async with open_user_wire(server, "alice") as other:
        await other.ok("pull", channel="rd")
    assert (await alice.ok("pull", channel="rd"))["messages"] == []
    # Its ack timeout does.
    reply = await asyncio.wait_for(alice.ok("pull", channel="rd", wait=4), PROMPT)
    assert [(m["id"], m["attempt"]) for m in reply["messages"]] == [(1, 2)]


# --- permissions ------------------------------------------------------------


async def test_permissions(server: Server, admin: Wire, alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="alices")
    await alice.ok("subscribe", channel="alices")
    await bob.ok("subscribe", channel="alices")
    await bob.ok("publish", channel="alices", messages=[1, 2, 3])

    # A user cannot pull, ack or nack another user's queue.
    await bob.error("pull", "forbidden", channel="alices", queue="alice")
    await alice.ok("pull", channel="alices", max=2)
    await bob.error("ack", "forbidden", channel="alices", queue="alice", ids=[1])
    await bob.error("nack", "forbidden", channel="alices", queue="alice", ids=[2])
    # ...nor delete another user's channel...
    await bob.error("channel.delete", "forbidden", name="alices")
    # ...nor manage users.
    await bob.error("user.create", "forbidden", name="mallory", password="p" * 8)
    await bob.error("user.list", "forbidden")
    await bob.error("user.get", "forbidden", name="alice")
    await bob.error("user.delete", "forbidden", name="alice")
    # Nothing changed.
    [alice_q, bob_q] = (await alice.ok("queue.list", channel="alices"))["queues"]
    assert (alice_q["depth"], alice_q["inflight"]) == (1, 2)
    assert (bob_q["depth"], bob_q["inflight"]) == (3, 0)

    # The channel's owner can delete a queue in her channel, but not pull from it.
    await alice.error("pull", "forbidden", channel="alices", queue="bob")
    await alice.ok("queue.delete", channel="alices", queue="bob")

    # An admin can do everything.
    await bob.ok("subscribe", channel="alices", queue="bq")
    await alice.ok("publish", channel="alices", data=4)
    [m] = (await admin.ok("pull", channel="alices", queue="bq"))["messages"]
    assert (await admin.ok("nack", channel="alices", queue="bq", ids=[m["id"]]))["requeued"] == 1
    ready = (await admin.ok("pull", channel="alices", queue="alice", max=10))["messages"]
    assert [m["id"] for m in ready] == [3, 4]
    reply = await admin.ok("ack", channel="alices", queue="alice", ids=[1, 2, 3, 4])
    assert reply == {"ok": True, "acked": 4, "unknown": []}
    await admin.ok("queue.delete", channel="alices", queue="bq")
    await create_user(admin, "carol")
    await admin.ok("user.get", name="carol")
    await admin.ok("user.delete", name="carol")
    await admin.ok("channel.delete", name="alices")
    await alice.error("channel.get", "not_found", name="alices")


async def test_every_admin_has_admin_rights(server: Server, admin: Wire) -> None:
    await create_user(admin, "root", role="admin")
    async with open_user_wire(server, "root") as root:
        await root.ok("user.list")
        await root.ok("channel.create", name="rc")
        await root.ok("subscribe", channel="rc")
        await admin.ok("channel.delete", name="rc")


# --- many clients -----------------------------------------------------------


async def test_200_concurrent_connections(server: Server, admin: Wire) -> None:
    users = ["u0", "u1", "u2", "u3"]
    for user in users:
        await create_user(admin, user)

    async def client(n: int) -> list[Any]:
        user = users[n % len(users)]
        async with open_wire(server) as wire:
            assert (await wire.ok("auth", token=server.mint_token(user)))["user"] == user
            await wire.ok("channel.create", name=f"c{n}")
            await wire.ok("subscribe", channel=f"c{n}", queue=f"q{n}")
            mine = [{"client": n, "seq": i} for i in range(5)]
            await wire.ok("publish", channel=f"c{n}", data=mine[0])
            reply = await wire.ok("publish", channel=f"c{n}", messages=mine[1:])
            assert reply == {"ok": True, "message_ids": [2, 3, 4, 5], "queues": 1}
            pulled = (await wire.ok("pull", channel=f"c{n}", queue=f"q{n}", max=10))["messages"]
            assert [m["publisher"] for m in pulled] == [user] * 5
            ids = [m["id"] for m in pulled]
            assert (await wire.ok("ack", channel=f"c{n}", queue=f"q{n}", ids=ids))["acked"] == 5
            return [m["data"] for m in pulled]

    results = await asyncio.gather(*(client(n) for n in range(200)))
    for n, data in enumerate(results):
        assert data == [{"client": n, "seq": i} for i in range(5)]
    channels = (await admin.ok("channel.list"))["channels"]
    assert len(channels) == 200
    assert all(c["published"] == 5 and c["queue_count"] == 1 for c in channels)


async def test_200_concurrent_connections_on_one_channel(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as srv, open_user_wire(srv, "admin") as admin:
        await admin.ok("channel.create", name="all")
        await admin.ok("subscribe", channel="all", queue="sink")

        async def client(n: int) -> list[int]:
            async with open_user_wire(srv, "admin") as wire:
                reply = await wire.ok("publish", channel="all", messages=[n] * 3)
                return reply["message_ids"]

        results = await asyncio.gather(*(client(n) for n in range(200)))
        ids = list(itertools.chain.from_iterable(results))
        # Every batch got consecutive ids, and no id was given twice.
        for batch in results:
            assert batch == list(range(batch[0], batch[0] + 3))
        assert sorted(ids) == list(range(1, 601))
        messages = (await admin.ok("pull", channel="all", queue="sink", max=1000))["messages"]
        assert [m["id"] for m in messages] == list(range(1, 601))
        by_id = {m["id"]: m["data"] for m in messages}
        for n, batch in enumerate(results):
            assert [by_id[i] for i in batch] == [n] * 3
