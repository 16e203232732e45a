"""The closing state: every reply made is sent before the connection closes.

Whether the client ends its sending side, the server shuts down, or a
subprocess gets SIGTERM, a waiting pull is answered (an empty list) before
`bye`, and replies that waited for the disk are sent, not dropped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from conftest import open_user_wire, running_server, until_pull_waits

pytestmark = [pytest.mark.every_store, pytest.mark.over_tls]

BYE = {"event": "bye", "error": {"code": "shutting_down", "message": "server is shutting down"}}


async def test_shutdown_answers_a_waiting_pull_before_bye(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data") as server,
        open_user_wire(server, "admin") as wire,
    ):
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c")
        await wire.send("pull", channel="c", wait=60, id="long")
        await until_pull_waits(server, "c", "admin")
        stopping = asyncio.ensure_future(server.stop())
        assert await wire.recv() == {"ok": True, "id": "long", "messages": []}
        assert await wire.recv() == BYE
        assert await wire.rest() == b""
        await stopping


async def test_replies_read_before_eof_are_all_sent(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data") as server,
        open_user_wire(server, "admin") as wire,
    ):
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c")
        count = 500
        wire.writer.write(
            b"".join(
                orjson.dumps({"op": "publish", "channel": "c", "data": n, "id": n}) + b"\n"
                for n in range(count)
            )
            + b'{"op":"pull","channel":"c","max":1000,"id":"pull"}\n'
        )
        wire.writer.write_eof()
        replies = [orjson.loads(line) for line in (await wire.rest()).splitlines()]
        assert [reply["id"] for reply in replies] == [*range(count), "pull"]
        assert all(reply["ok"] for reply in replies)
        assert [m["data"] for m in replies[-1]["messages"]] == list(range(count))


async def test_eof_ends_a_waiting_pull_and_the_pulls_behind_it(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as server:
        async with open_user_wire(server, "admin") as setup:
            await setup.ok("channel.create", name="c")
            await setup.ok("subscribe", channel="c")
        async with open_user_wire(server, "admin") as wire:
            # A pull behind a waiting pull waits in turn; EOF ends both.
            await wire.send("pull", channel="c", wait=60, id=1)
            await wire.send("pull", channel="c", wait=60, id=2)
            await until_pull_waits(server, "c", "admin")
            wire.writer.write_eof()
            first, second = (orjson.loads(line) for line in (await wire.rest()).splitlines())
            assert first == {"ok": True, "id": 1, "messages": []}
            assert second == {"ok": True, "id": 2, "messages": []}
