"""A client that floods requests or does not read its replies only slows itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from conftest import Wire, open_user_wire, open_wire, running_server

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]

HIGH = 64 * 1024
# Well past what loopback socket buffers on both sides can absorb, so the
# client's own writes must block once the server stops reading.
FLOOD_BYTES = 48 * 1024 * 1024


async def test_unread_replies_pause_the_connection_not_the_server(tmp_path: Path) -> None:
    async with (
        running_server(
            tmp_path / "data", write_buffer_high=HIGH, max_pipeline_bytes=HIGH
        ) as server,
        open_user_wire(server, "admin") as flooder,
        open_wire(server) as bystander,
    ):
        # `help` answers 14 bytes with about 2 KB: unbounded, this flood
        # would make the server build gigabytes of replies.
        request = b'{"op":"help"}\n'
        chunk = request * 4096
        for _ in range(FLOOD_BYTES // len(chunk)):
            flooder.writer.write(chunk)
        # Nothing reads the replies, so the server must stop reading and
        # the client's writes must back up: drain cannot finish.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(flooder.writer.drain(), 2.0)

        [connection] = [c for c in server.connections.open if c.caller.name == "admin"]
        transport = connection._transport
        assert transport is not None
        largest_reply = 4 * 1024
        assert transport.get_write_buffer_size() <= 2 * HIGH + largest_reply
        assert connection._backlog_bytes <= HIGH + 256 * 1024  # one read's worth over

        # Everyone else is served as usual.
        assert await bystander.call("ping", id="other") == {"ok": True, "id": "other"}
        # Megabytes are still queued in the client: drop them rather than flush.
        flooder.writer.transport.abort()


async def test_replies_survive_backpressure_complete_and_in_order(tmp_path: Path) -> None:
    async with (
        running_server(
            tmp_path / "data", write_buffer_high=HIGH, max_pipeline=50, max_pipeline_bytes=HIGH
        ) as server,
        open_user_wire(server, "admin") as wire,
    ):
        count = 20_000
        wire.writer.write(
            b"".join(orjson.dumps({"op": "help", "id": i}) + b"\n" for i in range(count))
        )
        # Read slowly relative to the server: every reply, in order, once.
        for expected in range(count):
            reply = orjson.loads(await wire.recv_line())
            assert reply["id"] == expected and reply["ok"] is True
        await wire.writer.drain()
        assert await wire.call("ping", id="end") == {"ok": True, "id": "end"}


async def test_requests_behind_a_long_poll_wait_and_then_run_in_order(alice: Wire) -> None:
    await alice.ok("channel.create", name="lp")
    await alice.ok("subscribe", channel="lp")
    # A waiting pull holds back the replies behind it, which still run in order.
    lines = [orjson.dumps({"op": "pull", "channel": "lp", "wait": 0.3, "id": "poll"})]
    lines += [orjson.dumps({"op": "ping", "id": i}) for i in range(100)]
    await alice.send_raw(b"\n".join(lines) + b"\n")
    assert await alice.recv() == {"ok": True, "id": "poll", "messages": []}
    for i in range(100):
        assert await alice.recv() == {"ok": True, "id": i}


@pytest.mark.local_store(
    "turns order requests within one process; on the redis store each request waits for "
    "its script, and Redis orders the connections' scripts"
)
async def test_a_long_pipeline_takes_turns_with_other_connections(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", frames_per_turn=4) as server,
        open_user_wire(server, "admin") as pipeliner,
        open_user_wire(server, "admin") as other,
    ):
        await pipeliner.ok("channel.create", name="c")
        await pipeliner.ok("subscribe", channel="c")
        count = 200
        # Both arrive before the server next reads: the pipeline first.
        pipeliner.writer.write(b'{"op":"publish","channel":"c","data":0}\n' * count)
        other.writer.write(b'{"op":"publish","channel":"c","data":"other"}\n')
        # Ids count the publishes handled before: the other connection's came
        # after a turn of the pipeline (16 frames while none of its replies
        # wait for the disk, then 4), not after all of it.
        [other_id] = (await other.recv())["message_ids"]
        assert other_id <= 2 * 16
        ids = [(await pipeliner.recv())["message_ids"][0] for _ in range(count)]
        assert ids == sorted(ids) and other_id not in ids and len(set(ids)) == count


async def test_a_pipeline_split_into_turns_still_ends_at_eof(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", frames_per_turn=3) as server,
        open_user_wire(server, "admin") as wire,
    ):
        count = 50  # pings wait for nothing: turns of 4 * 3 frames
        await wire.send_raw(b"".join(b'{"op":"ping","id":%d}\n' % i for i in range(count)))
        wire.writer.write_eof()
        replies = [await wire.recv() for _ in range(count)]
        assert replies == [{"ok": True, "id": i} for i in range(count)]
        assert await wire.closed()
