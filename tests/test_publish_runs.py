"""Pipelined one-message publishes are published together (a run), yet answered one by one.

The server publishes consecutive one-message publishes to one channel, read
together, as one batch (see ops.PublishRun). From outside nothing may show it:
every request gets its own reply in order, anything else on the connection
sees the publishes before it, and a run that would overflow a queue is
refused publish by publish, as if each had come alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Wire, expect_error, open_user_wire, running_server
from tcpmq.server import Server

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]


def _publish(channel: str, data: Any, rid: int | None = None) -> bytes:
    request: dict[str, Any] = {"op": "publish", "channel": channel, "data": data}
    if rid is not None:
        request["id"] = rid
    return orjson.dumps(request) + b"\n"


async def _setup(wire: Wire, *channels: str) -> None:
    for channel in channels:
        await wire.ok("channel.create", name=channel)
        await wire.ok("subscribe", channel=channel, queue="q")


async def test_each_publish_of_a_run_gets_its_reply_in_order(server: Server) -> None:
    async with open_user_wire(server, "admin") as wire:
        await _setup(wire, "c", "d")
        lines = [
            *(_publish("c", n, rid=n) for n in range(5)),
            b'{"op":"ping","id":"p"}\n',
            *(_publish("d", n, rid=10 + n) for n in range(3)),
            b"{not json\n",
            _publish("c", 5, rid=20),
            _publish("nowhere", 1, rid=21),
            _publish("c", 6, rid=22),
            b'{"op":"publish","channel":"c","messages":[7,8],"id":23}\n',
            b'{"op":"pull","channel":"c","queue":"q","max":100,"id":24}\n',
        ]
        await wire.send_raw(b"".join(lines))
        replies = [await wire.recv() for _ in lines]
    assert [r.get("id") for r in replies] == [
        *range(5),
        "p",
        *range(10, 13),
        None,
        20,
        21,
        22,
        23,
        24,
    ]
    assert [r["message_ids"] for r in replies[:5]] == [[1], [2], [3], [4], [5]]
    assert all(r["queues"] == 1 for r in replies[:5])
    assert [r["message_ids"] for r in replies[6:9]] == [[1], [2], [3]]
    expect_error(replies[9], "bad_json")
    assert replies[10]["message_ids"] == [6]
    expect_error(replies[11], "not_found")
    assert replies[12]["message_ids"] == [7]
    assert replies[13]["message_ids"] == [8, 9]
    pulled = replies[14]["messages"]
    assert [m["data"] for m in pulled] == list(range(9))
    assert [m["id"] for m in pulled] == list(range(1, 10))


async def test_a_request_behind_a_run_sees_the_whole_run(server: Server) -> None:
    async with open_user_wire(server, "admin") as wire:
        await _setup(wire, "c")
        pull = b'{"op":"pull","channel":"c","queue":"q","max":10}\n'
        await wire.send_raw(b"".join(_publish("c", n) for n in range(3)) + pull)
        replies = [await wire.recv() for _ in range(4)]
    assert [m["data"] for m in replies[3]["messages"]] == [0, 1, 2]


async def test_a_run_that_would_overflow_a_queue_is_refused_publish_by_publish(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "data", max_queue_messages=3) as server,
        open_user_wire(server, "admin") as wire,
    ):
        await _setup(wire, "c")
        await wire.send_raw(b"".join(_publish("c", n, rid=n) for n in range(5)))
        replies = [await wire.recv() for _ in range(5)]
        assert [r["message_ids"] for r in replies[:3]] == [[1], [2], [3]]
        for reply in replies[3:]:
            assert expect_error(reply, "limit_exceeded")["limit"] == "max_queue_messages"
        assert [r["id"] for r in replies] == list(range(5))
        queue = (await wire.ok("queue.list", channel="c"))["queues"][0]
        assert queue["depth"] == 3
        channel = (await wire.ok("channel.get", name="c"))["channel"]
        assert channel["published"] == 3


async def test_a_batch_publish_in_an_overflowing_run_is_refused_whole(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_queue_messages=4) as server,
        open_user_wire(server, "admin") as wire,
    ):
        await _setup(wire, "c")
        lines = [
            _publish("c", "a", rid=1),
            b'{"op":"publish","channel":"c","messages":["b","c","d","e"],"id":2}\n',
            b'{"op":"publish","channel":"c","messages":["f","g"],"id":3}\n',
            _publish("c", "h", rid=4),
        ]
        await wire.send_raw(b"".join(lines))
        first, batch, fits, last = [await wire.recv() for _ in lines]
        # Alone, each gets what it would have: the batch of four cannot join "a".
        assert first["message_ids"] == [1]
        assert expect_error(batch, "limit_exceeded")["limit"] == "max_queue_messages"
        assert fits["message_ids"] == [2, 3]
        assert last["message_ids"] == [4]
        pulled = (await wire.ok("pull", channel="c", queue="q", max=10))["messages"]
        assert [m["data"] for m in pulled] == ["a", "f", "g", "h"]


async def test_a_waiting_pull_gets_messages_of_a_run(server: Server) -> None:
    async with (
        open_user_wire(server, "admin") as publisher,
        open_user_wire(server, "admin") as consumer,
    ):
        await _setup(publisher, "c")
        await consumer.send("pull", channel="c", queue="q", max=10, wait=5)
        await publisher.ok("ping")  # the pull is waiting by now: same server, same loop
        await publisher.send_raw(b"".join(_publish("c", n) for n in range(4)))
        replies = [await publisher.recv() for _ in range(4)]
        assert [r["message_ids"] for r in replies] == [[1], [2], [3], [4]]
        delivered = [m["data"] for m in (await consumer.recv())["messages"]]
        rest = (await consumer.ok("pull", channel="c", queue="q", max=10))["messages"]
        assert delivered + [m["data"] for m in rest] == [0, 1, 2, 3]
        assert delivered
