"""One connection's costly requests cannot hold the others up (CPU fairness).

Validation stops at the first error, so a hostile request costs work up to
its first fault, not its length; and a connection yields to the others after
`bytes_per_turn` bytes of requests, as after `frames_per_turn` frames.
Timings are bench/fairness.py's; here, what the client sees.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from conftest import Wire, expect_error, open_user_wire, open_wire, running_server
from tcpmq.cpugate import LargeRequestGate
from tcpmq.server import Server

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]

MIB = 1024 * 1024


async def test_a_huge_list_of_bad_ids_is_refused_at_the_first(admin: Wire) -> None:
    # Nearly max_frame_bytes of ids that are not integers: one error, at index 0.
    count = (MIB - 100) // 4
    line = orjson.dumps({"op": "ack", "id": 1, "channel": "c", "ids": ["1"] * count})
    reply = await admin.call_raw(line)
    error = expect_error(reply, "bad_request")
    assert error["field"] == "ids.0"
    assert error["message"].startswith("ids.0:")
    assert reply["id"] == 1
    assert await admin.call("ping", id=2) == {"ok": True, "id": 2}


async def test_the_first_bad_id_is_named_wherever_it_is(admin: Wire) -> None:
    ids = [*range(1, 5001), 0, "x", -1]
    error = await admin.error("ack", "bad_request", channel="c", ids=ids)
    assert error["field"] == "ids.5000"
    assert error["min"] == 1


async def test_the_first_unknown_field_is_named_before_a_missing_one(admin: Wire) -> None:
    # `channel` is missing too; the unknown fields come first, in request order.
    fields = {f"k{i}": 0 for i in range(50_000)}
    error = await admin.error("pull", "bad_request", **fields)
    assert error == {
        "code": "bad_request",
        "message": "unknown field 'k0'",
        "field": "k0",
    }


async def test_a_long_unknown_field_name_is_not_echoed_whole(admin: Wire) -> None:
    name = "k" * 10_000
    error = await admin.error("ping", "bad_request", **{name: 1})
    assert error["field"] == "k" * 64 + "..."
    assert len(error["message"]) < 100


async def test_a_line_of_empty_arrays_is_refused_before_it_is_parsed(admin: Wire) -> None:
    # 1 MiB of `[]` would be 350,000 lists: ~100 ms of parsing, one frame.
    line = b'{"op":"ping","id":1,"x":[' + b",".join([b"[]"] * 349_000) + b"]}"
    reply = await admin.call_raw(line)
    error = expect_error(reply, "bad_request")
    assert error["limit"] == "max_containers"
    assert error["max"] == 32768
    assert "field" not in error
    assert await admin.call("ping", id=2) == {"ok": True, "id": 2}


async def test_containers_are_counted_outside_strings_and_up_to_the_limit(admin: Wire) -> None:
    await admin.call("channel.create", name="brackets")
    # Brackets inside strings, escaped quotes included, are data.
    text = '[{\\"' * 60_000
    reply = await admin.call("publish", channel="brackets", data=text)
    assert reply["ok"] is True
    # The request object, the list and 32,766 arrays: exactly the limit.
    reply = await admin.call("publish", channel="brackets", data=[[]] * 32_766)
    assert reply["ok"] is True
    error = await admin.error("publish", "bad_request", channel="brackets", data=[[]] * 32_767)
    assert error["limit"] == "max_containers"


async def test_a_smaller_container_limit_is_applied(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_containers=100) as server,
        open_user_wire(server, "admin") as admin,
    ):
        assert (await admin.call("server.info"))["limits"]["max_containers"] == 100
        # 100 containers: parsed, then refused for the unknown field.
        error = await admin.error("ping", "bad_request", x=[[]] * 98)
        assert error["field"] == "x"
        error = await admin.error("ping", "bad_request", x=[[]] * 99)
        assert error["limit"] == "max_containers"
        assert error["max"] == 100


async def test_before_auth_a_line_of_arrays_is_refused_before_it_is_parsed(wire: Wire) -> None:
    # 8 KiB of `[]`: 2,700 lists, where auth, login and ping take none.
    line = b'{"op":"ping","x":[' + b",".join([b"[]"] * 2700) + b"]}"
    error = expect_error(await wire.call_raw(line), "bad_request")
    assert (error["limit"], error["max"]) == ("max_containers", 128)
    assert "field" not in error and "before authentication" in error["message"]
    # A few are parsed as ever, and the field named.
    few = orjson.dumps({"op": "ping", "x": [[]] * 100})
    assert expect_error(await wire.call_raw(few), "bad_request")["field"] == "x"
    assert await wire.call("ping", id=1) == {"ok": True, "id": 1}


async def test_one_large_request_per_pass_of_the_loop() -> None:
    gate = LargeRequestGate()
    assert gate.enter()
    assert not gate.enter()  # the rest of this pass: another must wait
    await asyncio.sleep(0)  # one pass of the loop: the subject of the test
    assert gate.enter()


async def test_unknown_fields_before_auth_are_refused_at_the_first(wire: Wire) -> None:
    # A login whose fields are missing and unknown: the first unknown one answers.
    fields = {f"u{i}": i for i in range(500)}
    error = await wire.error("login", "bad_request", **fields)
    assert error["field"] == "u0"
    error = await wire.error("ping", "bad_request", **fields)
    assert error["field"] == "u0"
    # Any other op is refused as unauthenticated, its fields never looked at.
    reply = await wire.call("ack", channel="c", ids=["x"] * 1000)
    expect_error(reply, "unauthenticated")
    assert await wire.call("ping", id=3) == {"ok": True, "id": 3}


async def _turn_order(server: Server, frame: bytes, count: int) -> tuple[int, list[int]]:
    """Pipeline `count` publishes of `frame` on one connection and one on another.

    Returns the message id the other one got and the pipeline's ids.
    """
    async with (
        open_user_wire(server, "admin") as pipeliner,
        open_user_wire(server, "admin") as other,
    ):
        await pipeliner.ok("channel.create", name="c")
        await pipeliner.ok("subscribe", channel="c")
        # Both arrive before the server next reads: the pipeline first.
        pipeliner.writer.write(frame * count)
        other.writer.write(b'{"op":"publish","channel":"c","data":"other"}\n')
        [other_id] = (await other.recv())["message_ids"]
        ids = [(await pipeliner.recv())["message_ids"][0] for _ in range(count)]
        assert ids == sorted(ids) and other_id not in ids and len(set(ids)) == count
        return other_id, ids


async def test_large_requests_take_turns_by_size(tmp_path: Path) -> None:
    # 80 KB requests, over the default 64 KiB a turn: each turn is one
    # request, where frames_per_turn alone would allow all of them.
    frame = b'{"op":"publish","channel":"c","data":"%s"}\n' % (b"x" * 80_000)
    async with running_server(tmp_path / "data") as server:
        other_id, _ = await _turn_order(server, frame, 32)
    # The other connection's publish came after a few turns of the
    # pipeline (as many as its reads completed requests), not after all 32.
    assert other_id <= 8


@pytest.mark.local_store(
    "turns order requests within one process; on the redis store each request waits for "
    "its script, and Redis orders the connections' scripts"
)
async def test_small_requests_fill_a_turn_by_count(tmp_path: Path) -> None:
    frame = b'{"op":"publish","channel":"c","data":0}\n'
    async with running_server(tmp_path / "data", frames_per_turn=4) as server:
        other_id, _ = await _turn_order(server, frame, 200)
    assert other_id <= 2 * 16


async def test_bytes_per_turn_is_reported(admin: Wire, server: Server) -> None:
    limits = (await admin.ok("server.info"))["limits"]
    assert limits["bytes_per_turn"] == server.app.limits.bytes_per_turn == 64 * 1024


async def test_a_turn_handles_at_least_one_request(tmp_path: Path) -> None:
    # A budget smaller than any request still lets every request through.
    async with (
        running_server(tmp_path / "data", bytes_per_turn=1) as server,
        open_wire(server) as wire,
    ):
        await wire.send_raw(b"".join(b'{"op":"ping","id":%d}\n' % i for i in range(50)))
        replies = [await wire.recv() for _ in range(50)]
        assert replies == [{"ok": True, "id": i} for i in range(50)]
