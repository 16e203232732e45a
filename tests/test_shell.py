"""`tcpmq shell` driven like a person at a terminal: a pseudo-terminal, keys in, screen out.

Every step types something and waits for what must appear (the prompt, a
completed word, a result); nothing waits by sleeping (a Ctrl-C that CPython's
readline may hold back is sent again after a bounded wait: see `interrupt`).
"""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

from cli_helpers import Terminal, cli_env, login
from conftest import ADMIN_PASSWORD
from proxy import relay_to

TAB, ENTER, CTRL_C, CTRL_D, CTRL_U = "\t", "\r", "\x03", "\x04", "\x15"


async def interrupt(terminal: Terminal, prompt: str) -> None:
    """Ctrl-C at the prompt, until a new prompt shows.

    CPython's readline acts on SIGINT only when the signal interrupts its
    select(); one that lands just before it (a loaded machine preempting the
    shell between its echo and its select) waits for the next key. Nothing
    tells the two apart from outside, so a second Ctrl-C follows after a
    bounded wait: it interrupts the select and the first takes effect.
    """
    for _ in range(3):
        terminal.type(CTRL_C)
        try:
            async with asyncio.timeout(2.0):
                await terminal.expect(prompt)
            return
        except TimeoutError:
            continue
    await terminal.expect(prompt)


async def test_shell_session(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await login(cli)
        client = await cli.client()
        await client.channel_create("orders")
        await client.subscribe("orders", "billing")
        await client.channel_create("other")
        prompt = re.escape(f"admin@{cli.url.removeprefix('tcpmq://')}> ")

        terminal = await Terminal.spawn(cli, "shell")
        try:
            await terminal.expect("'help' lists the commands")
            await terminal.expect(prompt)

            terminal.type("channel add fresh" + ENTER)
            await terminal.expect("created channel 'fresh'\n")
            await terminal.expect(prompt)

            # A mistake prints one line and the shell goes on.
            terminal.type("channel get nope" + ENTER)
            await terminal.expect("tcpmq: not_found: channel 'nope' does not exist\n")
            await terminal.expect(prompt)
            terminal.type("channel frob" + ENTER)
            await terminal.expect("tcpmq: channel: argument COMMAND: invalid choice: 'frob'")
            await terminal.expect(prompt)

            # TAB completes a sub-command, a channel name from the server, a queue of that channel.
            terminal.type("chan" + TAB)
            await terminal.expect("channel ")
            terminal.type("ge" + TAB)
            await terminal.expect("t ")
            terminal.type("or" + TAB)
            await terminal.expect("ders ")
            terminal.type(ENTER)
            await terminal.expect(r"name:\s+orders\n")
            await terminal.expect(r"billing\s+admin")
            await terminal.expect(prompt)
            terminal.type("queue rm orders b" + TAB)
            await terminal.expect("illing ")
            terminal.type(CTRL_U + "pub orders --ra" + TAB)
            await terminal.expect("w ")
            terminal.type(CTRL_U + "sub o" + TAB + TAB)  # two candidates: both listed
            await terminal.expect(r"orders\s+other")
            terminal.type(CTRL_U + ENTER)
            await terminal.expect(prompt)

            # The same commands as the command line, with --json too.
            terminal.type("pub orders '{\"n\": 1}'" + ENTER)
            await terminal.expect("published message 1 to 'orders'")
            await terminal.expect(prompt)
            terminal.type("pull orders --queue billing --json" + ENTER)
            await terminal.expect(r'\{"id":1,"data":\{"n":1\}')
            await terminal.expect(prompt)

            # Ctrl-C at the prompt drops the line; during --follow it ends the command.
            terminal.type("channel rm orders")
            # Readline is reading (it echoed): a Ctrl-C sent the instant the
            # prompt appears can beat CPython's readline to its select() and
            # wait there for the next key; no person types that fast.
            await terminal.expect("channel rm orders")
            await interrupt(terminal, prompt)
            terminal.type("pull orders --queue billing --follow --wait 120" + ENTER)
            await client.publish("orders", "live")
            await terminal.expect('2  "live"\n')
            terminal.type(CTRL_C)
            await terminal.expect(prompt)
            [queue] = await client.queue_list("orders")
            assert (queue.depth, queue.inflight) == (0, 0)
            # The long poll Ctrl-C ended (120 s) does not hold up the next command.
            terminal.type("whoami" + ENTER)
            await terminal.expect(r"admin \(admin\) at ")
            await terminal.expect(prompt)

            terminal.type("help" + ENTER)
            await terminal.expect(r"channel\s+manage channels")
            await terminal.expect(prompt)
            terminal.type("help sub" + ENTER)
            await terminal.expect("example:\n  tcpmq sub orders")
            await terminal.expect(prompt)

            terminal.type(CTRL_D)
            assert await terminal.wait() == 0
        finally:
            await terminal.close()

        # The channel dropped with Ctrl-C was not deleted.
        assert [c.name for c in await client.channel_list()] == ["fresh", "orders", "other"]
        await client.close()
        history = cli.config / "history"
        assert stat.S_IMODE(history.stat().st_mode) == 0o600
        assert "channel add fresh" in history.read_text()


async def test_shell_logs_in_and_keeps_one_connection(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        host = re.escape(cli.url.removeprefix("tcpmq://"))
        terminal = await Terminal.spawn(cli, "shell")
        try:
            await terminal.expect("tcpmq: unauthenticated: not logged in")
            await terminal.expect(rf"\n{host}> ")
            terminal.type("whoami" + ENTER)
            await terminal.expect("tcpmq: unauthenticated: ")
            terminal.type("login --user admin" + ENTER)
            await terminal.expect("Password for admin at ")
            terminal.type(ADMIN_PASSWORD + ENTER)
            await terminal.expect("logged in to ")
            await terminal.expect(rf"admin@{host}> ")
            # One connection for the whole session: the server sees it once.
            terminal.type("channel add a" + ENTER)
            await terminal.expect(rf"admin@{host}> ")
            assert len(cli.server.connections) == 1
            terminal.type("exit" + ENTER)
            assert await terminal.wait() == 0
            assert ADMIN_PASSWORD not in terminal.output
        finally:
            await terminal.close()


async def test_shell_connects_again_when_its_connection_is_lost(tmp_path: Path) -> None:
    async with (
        cli_env(tmp_path) as cli,
        relay_to(cli.server.host, cli.server.port) as relay,
    ):
        prompt = re.escape(f"admin@{relay.url.removeprefix('tcpmq://')}> ")
        env = {"TCPMQ_URL": relay.url, **cli.as_admin()}
        terminal = await Terminal.spawn(cli, "shell", env=env)
        try:
            await terminal.expect(prompt)
            terminal.type("channel add a" + ENTER)
            await terminal.expect("created channel 'a'")
            await terminal.expect(prompt)
            relay.cut()  # as a broker restart or a network failure would
            terminal.type("channel add b" + ENTER)
            await terminal.expect("created channel 'b'")
            await terminal.expect(prompt)
            terminal.type("exit" + ENTER)
            assert await terminal.wait() == 0
            assert "\ntcpmq: " not in terminal.output  # no error line
        finally:
            await terminal.close()


async def test_shell_reads_commands_from_a_pipe(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        script = b"channel add a\nchannel add a\nchannel list --json\n"
        result = await cli.run("shell", env=cli.as_admin(), stdin=script)
        assert result.code == 0
        [created, listed] = result.out.splitlines()
        assert created == "created channel 'a'"
        assert listed.startswith('[{"name":"a"')
        assert result.err == "tcpmq: already_exists: channel 'a' already exists\n"
        # Like sh, the shell exits with the status of its last command.
        result = await cli.run("shell", env=cli.as_admin(), stdin=b"channel get nope\n")
        assert result.code == 5


async def test_shell_quotes_like_sh_and_asks_before_deleting(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("orders")
        await client.subscribe("orders", "billing")
        prompt = re.escape(f"{cli.url.removeprefix('tcpmq://')}> ")
        terminal = await Terminal.spawn(cli, "shell", env=cli.as_admin())
        try:
            await terminal.expect(prompt)
            # Unquoted, the braces' quotes go as they would in sh: an error, not a string.
            terminal.type('pub orders {"a":1}' + ENTER)
            await terminal.expect(r"tcpmq: DATA '\{a:1\}' is not valid JSON: .* quote JSON")
            await terminal.expect(prompt)
            terminal.type("pub orders '{\"a\": 1}'" + ENTER)
            await terminal.expect("published message 1 to 'orders' \\(1 queue\\)")
            await terminal.expect(prompt)
            terminal.type("channel rm orders" + ENTER)
            await terminal.expect(r"and the 1 message in them\? \[y/N\] ")
            terminal.type("n" + ENTER)
            await terminal.expect("tcpmq: 'orders' not deleted")
            await terminal.expect(prompt)
            terminal.type("exit" + ENTER)
            assert await terminal.wait() == 1  # the last command's status, as in sh
        finally:
            await terminal.close()
        [message] = await client.pull("orders", "billing")
        assert message.data == {"a": 1}
        await client.close()
