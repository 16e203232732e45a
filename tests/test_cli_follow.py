"""`tcpmq pull --follow` ended by Ctrl-C: every message printed exactly once, in order.

Two runs of `pull --follow` on one queue, each ended by SIGINT, with
messages published before and during both: across the two runs every
message is printed once, in publish order, and nothing is left in the
queue or in flight. The tests synchronise on the lines the process prints
and on the broker's replies, never on time.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from cli_helpers import TIMEOUT, Cli, cli_env
from conftest import ADMIN_PASSWORD_HASH, USER_PASSWORD, until_pull_waits
from tcpmq.client import Client, connect
from tcpmq.server import Server


class Follower:
    """A `pull --follow --json` process and the messages it printed."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ids: list[int] = []

    @classmethod
    async def start(cls, cli: Cli, *args: str) -> Follower:
        process = await cli.start(
            "pull", "events", "--queue", "q", "--follow", "--json", *args, env=cli.as_admin()
        )
        return cls(process)

    async def until(self, count: int) -> None:
        """Read printed messages until `count` have been printed in this run."""
        assert self.process.stdout is not None
        while len(self.ids) < count:
            line = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
            assert line, "the follower ended early"
            self.ids.append(orjson.loads(line)["id"])

    async def interrupt(self) -> tuple[int, str]:
        """SIGINT; read what it still prints; return its exit code and stderr."""
        self.process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(self.process.communicate(), TIMEOUT)
        self.ids += [orjson.loads(line)["id"] for line in out.splitlines()]
        assert self.process.returncode is not None
        return self.process.returncode, err.decode()


async def publish(client: Client, first: int, count: int) -> None:
    await client.publish_batch("events", list(range(first, first + count)))


async def test_follow_interrupted_and_resumed_prints_each_message_once(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("events")
        await client.subscribe("events", "q")
        await publish(client, 1, 150)

        # Small batches, so Ctrl-C lands while a backlog is being worked through.
        first = await Follower.start(cli, "--max", "7")
        await first.until(20)
        await publish(client, 151, 150)  # while it follows
        await first.until(60)
        code, err = await first.interrupt()
        assert (code, err) == (0, "")
        assert first.ids == sorted(first.ids) and len(set(first.ids)) == len(first.ids)

        # --wait 300: if a waiting long-poll did not end at once on Ctrl-C, the
        # test would run into its timeout instead of passing.
        second = await Follower.start(cli, "--wait", "300")
        await second.until(1)
        await publish(client, 301, 100)  # while it follows
        await second.until(400 - len(first.ids))
        code, err = await second.interrupt()
        assert (code, err) == (0, "")

        assert first.ids + second.ids == list(range(1, 401))
        [queue] = await client.queue_list("events")
        assert (queue.depth, queue.inflight) == (0, 0)
        await client.close()


async def test_follow_connects_again_after_a_restart(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("events")
        await client.subscribe("events", "q")
        await publish(client, 1, 1)
        follower = await Follower.start(cli)
        await follower.until(1)
        await until_pull_waits(cli.server, "events", "q")  # 1 acked, the long-poll parked
        await client.close()
        # The server goes away while the follower long-polls, and comes back on its port.
        config = replace(cli.server.config, port=cli.server.port)
        await cli.server.stop()
        assert follower.process.stderr is not None
        said = await asyncio.wait_for(follower.process.stderr.readline(), TIMEOUT)
        assert said.decode().endswith("; connecting again\n"), said
        restarted = Server(config, admin_password_hash=ADMIN_PASSWORD_HASH)
        await restarted.start()
        try:
            said = await asyncio.wait_for(follower.process.stderr.readline(), TIMEOUT)
            assert said == b"tcpmq: connected again\n"
            async with connect(cli.url, token=restarted.mint_token("admin")) as again:
                await publish(again, 2, 2)
                await follower.until(3)
                code, err = await follower.interrupt()
                assert (code, err) == (0, "")
                assert follower.ids == [1, 2, 3]
                [queue] = await again.queue_list("events")
                assert (queue.depth, queue.inflight) == (0, 0)
        finally:
            await restarted.stop()


async def test_follow_ends_when_its_user_is_deleted(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.user_create("bob", USER_PASSWORD)
        await client.channel_create("events")
        bob = await connect(cli.url, user="bob", password=USER_PASSWORD)
        await bob.subscribe("events", "q")
        process = await cli.start(
            "pull",
            "events",
            "--queue",
            "q",
            "--follow",
            env={"TCPMQ_TOKEN": cli.server.mint_token("bob")},
        )
        await until_pull_waits(cli.server, "events", "q")
        await client.user_delete("bob")
        # Its queue goes (not_found, exit 5) or its connection does (bye
        # auth_failed, exit 4), whichever it sees first: either way it ends
        # instead of connecting again and again.
        _, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert process.returncode in (4, 5), err
        assert b"connecting again" not in err
        await bob.close()
        await client.close()


async def test_follow_into_a_pipe_that_closes(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("events")
        await client.subscribe("events", "q")
        await publish(client, 1, 3)
        process = await asyncio.create_subprocess_shell(
            '"$PYTHON" -m tcpmq pull events --queue q --follow --json 2>err | head -n 1',
            stdout=asyncio.subprocess.PIPE,
            env={**cli.env, **cli.as_admin(), "PYTHON": sys.executable},
            cwd=cli.home,
            start_new_session=True,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        assert orjson.loads(line)["id"] == 1
        # head has gone; the next message the follower prints hits the closed pipe.
        await publish(client, 4, 1)
        await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert (cli.home / "err").read_text() == ""
        await client.close()
