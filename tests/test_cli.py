"""The `tcpmq` command line, run as a user runs it: subprocesses against a real broker.

Each test gets a broker and a HOME of its own; commands authenticate with an
admin token in TCPMQ_TOKEN unless the test is about credentials. Exit codes
and the one-line errors are part of the contract (docs/cli.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import stat
from pathlib import Path

import orjson
import pytest

from cli_helpers import Terminal, cli_env, login
from conftest import ADMIN_PASSWORD, USER_PASSWORD
from tcpmq.cli import main
from tcpmq.cli.main import build_command_line

OK, ERROR, USAGE, CONNECTION, AUTH, NOT_FOUND, FORBIDDEN = 0, 1, 2, 3, 4, 5, 6


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = []
            # One entry per command, not one per alias (`channel ls`).
            for choice in action._choices_actions:
                found += leaf_commands(action.choices[choice.dest], (*path, choice.dest))
            return found
    return [path]


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    commands = leaf_commands(build_command_line())
    assert {" ".join(command) for command in commands} == {
        *("serve", "token", "check", "repair", "shell", "config check"),
        *("stats", "top", "backup"),
        *("login", "logout", "whoami", "ping", "ops", "info"),
        *("user add", "user list", "user get", "user rm"),
        *("channel add", "channel list", "channel get", "channel rm"),
        *("channel grant", "channel revoke", "channel access"),
        *("sub", "queue list", "queue rm", "pub", "pull", "ack", "nack"),
        *("queue purge", "queue update", "peek", "passwd", "revoke-tokens"),
    }
    for command in commands:
        assert main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "example:" in out, (command, out)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("pub", "pull", "shell", "login", "channel"))


async def test_login_stores_a_private_token_that_later_commands_use(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        result = await cli.run("whoami")
        assert result.code == AUTH
        assert result.err == (
            f"tcpmq: unauthenticated: not logged in to {cli.url}; "
            "run 'tcpmq login --user NAME' or give --token\n"
        )

        wrong = await cli.run("login", "-u", "admin", "--password-stdin", stdin=b"nope-nope\n")
        assert wrong.code == AUTH and wrong.err.startswith("tcpmq: auth_failed: ")
        assert not (cli.config / "credentials.json").exists()

        result = await cli.run(
            "login", "--user", "admin", "--password-stdin", stdin=f"{ADMIN_PASSWORD}\n".encode()
        )
        assert result.code == OK, result
        assert result.out.startswith(f"logged in to {cli.url} as admin (admin) until ")
        credentials = cli.config / "credentials.json"
        assert mode(cli.config) == 0o700
        assert mode(credentials) == 0o600
        stored = orjson.loads(credentials.read_bytes())["servers"][cli.url]
        assert stored["user"] == "admin" and stored["token"].startswith("eyJ")
        assert stored["token"] not in result.out + result.err
        # Nothing but the credentials file is left behind (no temporary files).
        assert os.listdir(cli.config) == ["credentials.json"]

        result = await cli.run("whoami")
        assert (result.code, result.out) == (OK, f"admin (admin) at {cli.url}\n")
        # The same server spelled another way finds the same login.
        result = await cli.run("--json", "whoami", "--url", cli.url + "/")
        assert orjson.loads(result.out) == {"url": cli.url, "user": "admin", "role": "admin"}

        result = await cli.run("logout")
        assert result.out == f"removed the stored login for {cli.url}\n"
        assert cli.url not in orjson.loads(credentials.read_bytes())["servers"]
        assert mode(credentials) == 0o600
        result = await cli.run("logout", "--json")
        assert orjson.loads(result.out) == {"url": cli.url, "removed": False, "revoked": False}
        assert (await cli.run("whoami")).code == AUTH


async def test_logout_revoke_makes_the_server_refuse_the_token(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        password = f"{ADMIN_PASSWORD}\n".encode()
        assert (
            await cli.run("login", "-u", "admin", "--password-stdin", stdin=password)
        ).code == OK
        credentials = cli.config / "credentials.json"
        token = orjson.loads(credentials.read_bytes())["servers"][cli.url]["token"]
        result = await cli.run("logout", "--revoke")
        assert result.code == OK, result
        assert result.out == (
            f"removed the stored login for {cli.url}; "
            "the server refuses every token of this user issued so far\n"
        )
        # The forgotten token no longer works anywhere.
        refused = await cli.run("whoami", "--token", token)
        assert refused.code == AUTH and "token revoked" in refused.err


async def test_login_asks_for_the_password_on_the_terminal(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        terminal = await Terminal.spawn(cli, "login", "--user", "admin")
        try:
            await terminal.expect(rf"Password for admin at {cli.url}: ")
            terminal.type(ADMIN_PASSWORD + "\r")
            await terminal.expect(f"logged in to {cli.url} as admin")
            assert await terminal.wait() == OK
            # getpass turned echo off: the password never appeared.
            assert ADMIN_PASSWORD not in terminal.output
        finally:
            await terminal.close()

        # Without a terminal there is nobody to ask: a usage error, not a hang.
        result = await cli.run("channel", "list", "--user", "admin")
        assert result.code == USAGE and "--password-stdin" in result.err


async def test_where_credentials_come_from(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.user_create("bob", USER_PASSWORD)
        await client.close()
        await login(cli)  # admin's login is stored
        bob = cli.server.mint_token("bob")

        async def who(*args: str, **env: str) -> str:
            result = await cli.run(*args, "whoami", env=env)
            assert result.code == OK, result
            return result.out.split()[0]

        assert await who() == "admin"
        assert await who(TCPMQ_TOKEN=bob) == "bob"
        assert await who("--token", bob) == "bob"
        assert await who("--user", "bob", TCPMQ_PASSWORD=USER_PASSWORD) == "bob"
        # An explicit --user wins over the token in the environment.
        assert (
            await who("--user", "admin", TCPMQ_TOKEN=bob, TCPMQ_PASSWORD=ADMIN_PASSWORD) == "admin"
        )

        result = await cli.run("whoami", "--token", bob, "--user", "bob")
        assert result.code == USAGE and result.err == "tcpmq: give --token or --user, not both\n"
        result = await cli.run("whoami", "--token", "not-a-token")
        assert result.code == AUTH
        assert (
            result.err.startswith("tcpmq: auth_failed: ")
            and "(credentials from --token)" in result.err
        )

        # A stored login past its expiry is refused without asking the server.
        credentials = cli.config / "credentials.json"
        document = orjson.loads(credentials.read_bytes())
        document["servers"][cli.url]["expires_at"] = 1000
        credentials.write_bytes(orjson.dumps(document))
        result = await cli.run("whoami")
        assert result.code == AUTH and "has expired; run 'tcpmq login' again" in result.err


async def test_user_commands(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        result = await cli.ok("user", "add", "alice", "--password-stdin", stdin=b"alice-password\n")
        assert result.out == "created user 'alice' (user)\n"
        result = await cli.ok(
            "user",
            "add",
            "root2",
            "--role",
            "admin",
            "--json",
            "--password-stdin",
            stdin=b"root2-password\n",
        )
        assert orjson.loads(result.out).keys() == {"name", "role", "created_at"}
        line = await cli.fails(
            ERROR, "user", "add", "alice", "--password-stdin", stdin=b"alice-password\n"
        )
        assert line == "tcpmq: already_exists: user 'alice' already exists"

        result = await cli.ok("user", "list")
        assert [row.split()[:2] for row in result.lines] == [
            ["NAME", "ROLE"],
            ["admin", "admin"],
            ["alice", "user"],
            ["root2", "admin"],
        ]
        result = await cli.ok("user", "get", "alice")
        assert result.lines[:2] == ["name:    alice", "role:    user"]
        assert await cli.fails(NOT_FOUND, "user", "get", "nobody") == (
            "tcpmq: not_found: user 'nobody' does not exist"
        )

        # alice can log in with the password given on stdin, but may not list users.
        alice = {"TCPMQ_PASSWORD": "alice-password"}
        assert (await cli.run("--user", "alice", "whoami", env=alice)).out.startswith(
            "alice (user)"
        )
        line = await cli.fails(
            FORBIDDEN, "user", "list", env={"TCPMQ_TOKEN": cli.server.mint_token("alice")}
        )
        assert line == "tcpmq: forbidden: only admins may do this"

        assert (await cli.ok("user", "rm", "alice")).out == "deleted user 'alice'\n"
        assert (await cli.ok("user", "rm", "root2", "--json")).out == "{}\n"
        await cli.fails(NOT_FOUND, "user", "rm", "alice")


async def test_channel_queue_and_subscription_commands(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        assert (await cli.ok("channel", "add", "orders")).out == "created channel 'orders'\n"
        line = await cli.fails(ERROR, "channel", "add", "orders")
        assert line == "tcpmq: already_exists: channel 'orders' already exists"
        line = await cli.fails(ERROR, "channel", "add", "no spaces")
        assert line.startswith("tcpmq: bad_request: ")

        result = await cli.ok("sub", "orders", "--queue", "billing")
        assert result.out == "created queue 'billing' on channel 'orders' (ack timeout 30s)\n"
        result = await cli.ok("sub", "orders", "--queue", "billing", "--ack-timeout", "1.5")
        assert result.out == "queue 'billing' on channel 'orders' exists (ack timeout 1.5s)\n"
        result = await cli.ok("sub", "orders", "--json")
        document = orjson.loads(result.out)
        assert document["created"] is True and document["queue"]["name"] == "admin"
        await cli.fails(NOT_FOUND, "sub", "nowhere")

        result = await cli.ok("channel", "list")
        assert [row.split()[:4] for row in result.lines] == [
            ["NAME", "OWNER", "PUBLISHED", "QUEUES"],
            ["orders", "admin", "0", "2"],
        ]
        result = await cli.ok("channel", "get", "orders")
        assert result.lines[0] == "name:      orders"
        assert [row.split()[:5] for row in result.lines[8:]] == [
            ["QUEUE", "OWNER", "READY", "INFLIGHT", "ACK_TIMEOUT"],
            ["admin", "admin", "0", "0", "30s"],
            ["billing", "admin", "0", "0", "1.5s"],
        ]
        channel = orjson.loads((await cli.ok("channel", "get", "orders", "--json")).out)
        assert channel["name"] == "orders" and len(channel["queues"]) == 2
        queues = orjson.loads((await cli.ok("--json", "queue", "list", "orders")).out)
        assert [q["name"] for q in queues] == ["admin", "billing"]
        await cli.fails(NOT_FOUND, "queue", "list", "nowhere")

        # bob may look, but not delete what admin owns.
        client = await cli.client()
        await client.user_create("bob", USER_PASSWORD)
        await client.close()
        bob = {"TCPMQ_TOKEN": cli.server.mint_token("bob")}
        await cli.ok("channel", "list", env=bob)
        line = await cli.fails(FORBIDDEN, "channel", "rm", "orders", env=bob)
        assert line.startswith("tcpmq: forbidden: ")

        result = await cli.ok("queue", "rm", "orders", "billing")
        assert result.out == "deleted queue 'billing' of channel 'orders'\n"
        line = await cli.fails(NOT_FOUND, "queue", "rm", "orders", "billing")
        assert line == "tcpmq: not_found: queue 'billing' does not exist in channel 'orders'"
        assert (await cli.ok("channel", "rm", "orders")).out == "deleted channel 'orders'\n"
        assert await cli.fails(NOT_FOUND, "channel", "get", "orders") == (
            "tcpmq: not_found: channel 'orders' does not exist"
        )
        assert (await cli.ok("channel", "list", "--json")).out == "[]\n"
        ops = orjson.loads((await cli.ok("ops", "--json")).out)
        assert {"publish", "pull", "channel.create"} <= {op["op"] for op in ops}
        about = orjson.loads((await cli.ok("info", "--json")).out)
        assert about["store"] == "log" and about["limits"]["max_batch"] == 1000
        text = (await cli.ok("info")).out.splitlines()
        assert text[0].startswith("tcpmq ") and text[0].endswith(", store log")
        assert ["max_queue_bytes", "268435456"] in [line.split() for line in text]


async def test_pub_pull_ack_nack(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("orders")
        await client.subscribe("orders", "billing")
        assert await cli.fails(NOT_FOUND, "pub", "nowhere", "1") == (
            "tcpmq: not_found: channel 'nowhere' does not exist"
        )

        result = await cli.ok("pub", "orders", '{"order": 1}')
        assert result.out == "published message 1 to 'orders' (1 queue)\n"
        await cli.ok("pub", "orders", "--raw", "hello world")
        await cli.ok("pub", "orders", "--raw", "42")
        result = await cli.ok("pub", "orders", "null", "--json")
        assert orjson.loads(result.out) == {
            "published": 1,
            "first_id": 4,
            "last_id": 4,
            "unqueued": 0,
        }

        result = await cli.ok("pull", "orders", "--queue", "billing", "--max", "3")
        assert result.lines == ['1  {"order":1}', '2  "hello world"', '3  "42"']
        result = await cli.ok("pull", "orders", "--queue", "billing", "--json")
        [message] = [orjson.loads(line) for line in result.lines]
        assert message["id"] == 4 and message["data"] is None and message["attempt"] == 1
        [queue] = await client.queue_list("orders")
        assert (queue.depth, queue.inflight) == (0, 0)  # printed, so acked
        assert (await cli.ok("pull", "orders", "--queue", "billing")).out == ""

        await client.publish_batch("orders", ["a", "b", "c"])
        result = await cli.ok("pull", "orders", "--queue", "billing", "--max", "5", "--no-ack")
        assert result.lines == ['5  "a"', '6  "b"', '7  "c"']
        result = await cli.ok("ack", "orders", "5", "99", "--queue", "billing")
        assert result.out == "acked 1; not in flight: 99\n"
        result = await cli.ok("nack", "orders", "6", "7", "--queue", "billing", "--json")
        assert orjson.loads(result.out) == {"requeued": 2, "unknown": []}
        result = await cli.ok("pull", "orders", "--queue", "billing", "--max", "5")
        assert result.lines == ['6  "b"  (attempt 2)', '7  "c"  (attempt 2)']

        await cli.fails(NOT_FOUND, "pull", "orders", "--queue", "nope")
        await cli.fails(NOT_FOUND, "ack", "nowhere", "1")
        line = await cli.fails(USAGE, "pull", "orders", "--follow", "--no-ack")
        assert "--no-ack" in line
        await client.close()


async def test_pub_streams_stdin_in_order(tmp_path: Path) -> None:
    count = 20_000
    lines = [f'{{"n": {n}}}' if n % 3 else f'"plain text {n}"' for n in range(count)]
    # A blank line is skipped; a last line without a newline still counts.
    payload = ("\n".join(lines[:100]) + "\n\n" + "\n".join(lines[100:])).encode()
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("audit")
        await client.subscribe("audit", "all")
        result = await cli.ok("pub", "audit", "--json", stdin=payload)
        assert orjson.loads(result.out) == {
            "published": count,
            "first_id": 1,
            "last_id": count,
            "unqueued": 0,
        }

        received = []
        while len(received) < count:
            batch = await client.pull("audit", "all", max=1000)
            assert batch
            received += batch
            await client.ack("audit", [m.id for m in batch], "all")
        assert [m.id for m in received] == list(range(1, count + 1))
        expected = [{"n": n} if n % 3 else f"plain text {n}" for n in range(count)]
        assert [m.data for m in received] == expected

        result = await cli.ok("pub", "audit", "--raw", "--batch", "2", stdin=b'{"x": 1}\n\nlast')
        assert result.out == f"published 3 messages to 'audit' (ids {count + 1} to {count + 3})\n"
        batch = await client.pull("audit", "all", max=10)
        assert [m.data for m in batch] == ['{"x": 1}', "", "last"]

        line = await cli.fails(NOT_FOUND, "pub", "nowhere", stdin=b"1\n2\n")
        assert line == (
            "tcpmq: not_found: channel 'nowhere' does not exist "
            "(0 messages published, 2 lines read)"
        )
        await client.close()


async def test_ping_and_connection_errors(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        # ping needs no login.
        result = await cli.run("ping")
        assert result.code == OK and result.out.startswith(f"pong from {cli.url} (tcpmq 0.1.0) in ")
        document = orjson.loads((await cli.run("ping", "--json")).out)
        assert document["url"] == cli.url and document["rtt_ms"] >= 0

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        closed = f"tcpmq://127.0.0.1:{closed_port}"
        line = await cli.fails(CONNECTION, "ping", "--url", closed)
        assert line == f"tcpmq: cannot connect to {closed}: connection refused"
        await cli.fails(CONNECTION, "channel", "list", env={"TCPMQ_URL": closed})

        line = await cli.fails(USAGE, "ping", "--url", "http://example.com")
        assert line == "tcpmq: not a tcpmq:// or tcpmqs:// URL: 'http://example.com'"
        line = await cli.fails(USAGE, "channel", "add")
        assert line == (
            "tcpmq: channel add: the following arguments are required: NAME "
            "(see 'tcpmq channel add --help')"
        )
        await cli.fails(USAGE, "frobnicate")
        await cli.fails(USAGE, "pull", "orders", "--max", "0")


async def test_a_broken_pipe_ends_quietly_and_returns_what_was_not_printed(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("orders")
        await client.subscribe("orders", "billing")
        await client.publish_batch("orders", list(range(5)))

        async def into_closed_pipe(*args: str) -> tuple[int | None, bytes]:
            read_end, write_end = os.pipe()
            os.close(read_end)  # the reader is gone before anything is written
            try:
                process = await cli.start(*args, env=cli.as_admin(), stdout=write_end)
            finally:
                os.close(write_end)
            assert process.stderr is not None
            err = await asyncio.wait_for(process.stderr.read(), 30)
            return await process.wait(), err

        assert await into_closed_pipe("channel", "list") == (141, b"")
        assert await into_closed_pipe("pull", "orders", "--queue", "billing", "--max", "3") == (
            141,
            b"",
        )
        # The three it could not print went back to the queue at once.
        messages = await client.pull("orders", "billing", max=10)
        assert [(m.data, m.attempt) for m in messages] == [(0, 2), (1, 2), (2, 2), (3, 1), (4, 1)]
        await client.close()


async def test_ctrl_c_ends_a_command_without_a_traceback(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("logs")
        await client.subscribe("logs", "tail")
        read_end, write_end = os.pipe()
        try:
            process = await cli.start("pub", "logs", env=cli.as_admin(), stdin=read_end)
        finally:
            os.close(read_end)
        try:
            os.write(write_end, b'"first line"\n')
            # The message arriving shows the command is up and waiting for more input.
            [message] = await client.pull("logs", "tail", wait=30)
            assert message.data == "first line"
            process.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(process.communicate(), 30)
        finally:
            os.close(write_end)
        assert process.returncode == 130
        assert out == b""
        assert err == b"tcpmq: interrupted; 1 message confirmed published\n"
        await client.close()
