"""What a newcomer trips over: addresses, typos, aliases, deletions, empty pulls, progress.

Subprocesses against a real broker (see cli_helpers); what depends on a
terminal runs on a pseudo-terminal, typing and waiting for output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

from cli_helpers import Cli, Terminal, cli_env
from tcpmq.cli import main
from tcpmq.client.url import Address, parse_address

OK, ERROR, USAGE, CONNECTION = 0, 1, 2, 3
ENTER, CTRL_C = "\r", "\x03"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_address_may_leave_out_the_scheme() -> None:
    assert parse_address("127.0.0.1:9000") == Address("127.0.0.1", 9000)
    assert parse_address("localhost") == Address("localhost", 7878)
    assert parse_address("[::1]:7879") == Address("::1", 7879)
    assert parse_address("tcpmq://h:1") == Address("h", 1)
    with pytest.raises(ValueError, match="not a tcpmq:// or tcpmqs:// URL"):
        parse_address("http://127.0.0.1:7878")


async def test_url_without_scheme_and_a_wrong_port(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        bare = cli.url.removeprefix("tcpmq://")
        result = await cli.run("ping", "--url", bare)
        assert result.code == OK and result.out.startswith(f"pong from {cli.url} ")
        await cli.ok("whoami", env={"TCPMQ_URL": bare})

        # Not logged in and the wrong port: the port is what to fix first.
        wrong = f"127.0.0.1:{closed_port()}"
        result = await cli.run("whoami", "--url", wrong)
        assert result.code == CONNECTION, result
        assert result.err == f"tcpmq: cannot connect to tcpmq://{wrong}: connection refused\n"
        # Reachable but not logged in is still an authentication error.
        result = await cli.run("whoami")
        assert result.code == 4 and result.err.startswith("tcpmq: unauthenticated: ")


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["chanel", "list"], "did you mean 'channel'?"),
        (["channel", "lsit"], "did you mean 'list'?"),
        (["pul", "orders"], "did you mean 'pull'?"),
        (["user", "add", "x", "--role", "admn"], "did you mean 'admin'?"),
    ],
)
def test_a_mistyped_command_gets_a_suggestion(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == USAGE
    err = capsys.readouterr().err
    assert suggestion in err and err.count("\n") == 1, err


def test_no_suggestion_for_nothing_alike(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "did you mean" not in err


async def test_ls_is_list(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await cli.ok("channel", "add", "orders")
        await cli.ok("sub", "orders")
        for group, *rest in (["channel"], ["user"], ["queue", "orders"]):
            listed = await cli.ok(group, "list", *rest, "--json")
            assert (await cli.ok(group, "ls", *rest, "--json")).out == listed.out


async def deletion_on_a_terminal(cli: Cli, *args: str) -> Terminal:
    return await Terminal.spawn(cli, *args, env=cli.as_admin())


async def test_rm_asks_on_a_terminal_and_says_what_goes(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("orders")
        await client.subscribe("orders", "billing")
        await client.subscribe("orders", "audit")
        await client.publish_batch("orders", [1, 2])
        await client.user_create("alice", "alice-passw0rd")
        question = (
            r"Delete channel 'orders' with its 2 queues \(audit, billing\) and the 4 messages "
            r"in them\? \[y/N\] "
        )
        try:
            for answer, code in (("n", ERROR), ("", ERROR), (CTRL_C, 130)):
                terminal = await deletion_on_a_terminal(cli, "channel", "rm", "orders")
                try:
                    await terminal.expect(question)
                    terminal.type(answer if answer == CTRL_C else answer + ENTER)
                    if code == ERROR:
                        await terminal.expect("tcpmq: 'orders' not deleted")
                    assert await terminal.wait() == code
                finally:
                    await terminal.close()
            assert [c.name for c in await client.channel_list()] == ["orders"]

            terminal = await deletion_on_a_terminal(cli, "channel", "rm", "orders")
            try:
                await terminal.expect(question)
                terminal.type("y" + ENTER)
                await terminal.expect("deleted channel 'orders'")
                assert await terminal.wait() == OK
            finally:
                await terminal.close()
            assert await client.channel_list() == []

            terminal = await deletion_on_a_terminal(cli, "user", "rm", "alice")
            try:
                await terminal.expect(
                    r"Delete user 'alice' \(user\) with all its queues and their messages, "
                    r"and end its connections\? \[y/N\] "
                )
                terminal.type("yes" + ENTER)
                await terminal.expect("deleted user 'alice'")
                assert await terminal.wait() == OK
            finally:
                await terminal.close()

            # --yes, or no such channel: nothing is asked.
            await client.channel_create("tmp")
            for args, shown in (
                (("channel", "rm", "tmp", "--yes"), "deleted channel 'tmp'"),
                (("channel", "rm", "nope"), "tcpmq: not_found: channel 'nope' does not exist"),
            ):
                terminal = await deletion_on_a_terminal(cli, *args)
                try:
                    await terminal.expect(shown)
                    await terminal.wait()
                    assert "[y/N]" not in terminal.output
                finally:
                    await terminal.close()
        finally:
            await client.close()


async def test_an_empty_pull_says_so_only_on_a_terminal(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await cli.ok("channel", "add", "orders")
        await cli.ok("sub", "orders")
        assert (await cli.ok("pull", "orders")).out == ""
        terminal = await Terminal.spawn(cli, "pull", "orders", env=cli.as_admin())
        try:
            await terminal.expect("no messages\n")
            assert await terminal.wait() == OK
        finally:
            await terminal.close()


async def test_the_progress_line_ends_properly(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await cli.ok("channel", "add", "logs")
        await cli.ok("sub", "logs")
        bin_dir = cli.home / "bin"
        bin_dir.mkdir()
        (bin_dir / "tcpmq").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tcpmq "$@"\n')
        (bin_dir / "tcpmq").chmod(0o755)
        env = {**cli.as_admin(), "PATH": f"{bin_dir}:{cli.env['PATH']}"}

        async def bash(command: str) -> Terminal:
            return await Terminal.spawn_argv(cli, ["bash", "-c", command], env)

        # stdin a pipe, stderr the terminal: a progress line, ended by the final count.
        terminal = await bash("printf '1\\n2\\n' | tcpmq pub logs")
        try:
            await terminal.expect("published 2 messages")
            assert await terminal.wait() == OK
            assert "2 published, " in terminal.raw
            assert "\x1b[K\r\n" in terminal.raw  # the line was ended, not left open
        finally:
            await terminal.close()

        # A line left open by a failure is cleared before the error is printed. The
        # progress line is shown at most every half second: feed lines until it is.
        fifo = cli.home / "lines"
        os.mkfifo(fifo)
        terminal = await bash("tcpmq pub logs < lines")
        writer = os.open(fifo, os.O_RDWR)  # O_RDWR: opening does not wait for the reader
        try:
            while " published, " not in terminal.output:
                os.write(writer, b"1\n")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await terminal.expect(" published, ")
            os.write(writer, b"bad\n")
            await terminal.expect("tcpmq: line ")
            assert await terminal.wait() == USAGE
            assert "\r\x1b[Ktcpmq: line " in terminal.raw
        finally:
            os.close(writer)
            await terminal.close()

        # Lines typed on the terminal are never written over: no progress line then.
        terminal = await Terminal.spawn(cli, "pub", "logs", env=cli.as_admin())
        try:
            await terminal.expect("end with Ctrl-D")
            terminal.type('"typed"' + ENTER)
            terminal.type("\x04")
            await terminal.expect("published 1 message to 'logs'")
            assert await terminal.wait() == OK
            assert " published, " not in terminal.output
        finally:
            await terminal.close()
