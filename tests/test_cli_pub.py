"""`tcpmq pub` sends what the user meant or refuses: JSON or an error, `--raw` for strings.

Subprocesses against a real broker, as in test_cli.py. What was stored is
checked by pulling with the client library, so a refused publish is seen to
have published nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from cli_helpers import Cli, cli_env

OK, ERROR, USAGE = 0, 1, 2
PRETTY = b'{\n  "order": 1,\n  "lines": [1, 2]\n}\n'


async def stored(cli: Cli, channel: str = "orders", queue: str = "billing") -> list[Any]:
    """The data of every message waiting in `queue`, acked on the way."""
    client = await cli.client()
    try:
        messages = await client.pull(channel, queue, max=100)
        if messages:
            await client.ack(channel, [m.id for m in messages], queue)
        return [m.data for m in messages]
    finally:
        await client.close()


async def subscribed(cli: Cli) -> None:
    client = await cli.client()
    await client.channel_create("orders")
    await client.subscribe("orders", "billing")
    await client.close()


async def test_invalid_json_is_an_error_unless_raw(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await subscribed(cli)
        line = await cli.fails(USAGE, "pub", "orders", '{"order": 1,}')
        assert line == (
            "tcpmq: DATA '{\"order\": 1,}' is not valid JSON: trailing comma is not allowed "
            "(line 1, column 12); use --raw to send it as a string"
        )
        await cli.fails(USAGE, "pub", "orders", "two words")
        assert await stored(cli) == []

        await cli.ok("pub", "orders", "--raw", '{"order": 1,}')
        await cli.ok("pub", "orders", '"two words"')
        await cli.ok("pub", "orders", "42")
        assert await stored(cli) == ['{"order": 1,}', "two words", 42]


async def test_a_document_on_stdin_is_refused_as_lines_and_sent_whole_with_file(
    tmp_path: Path,
) -> None:
    async with cli_env(tmp_path) as cli:
        await subscribed(cli)
        line = await cli.fails(USAGE, "pub", "orders", stdin=PRETTY)
        assert line.startswith("tcpmq: line 1 of stdin is not valid JSON: ")
        assert "use --file - to send stdin as one message, or --raw" in line
        assert await stored(cli) == []

        document = {"order": 1, "lines": [1, 2]}
        result = await cli.ok("pub", "orders", "--file", "-", stdin=PRETTY)
        assert result.out == "published message 1 to 'orders' (1 queue)\n"
        (cli.home / "order.json").write_bytes(PRETTY)
        await cli.ok("pub", "orders", "--file", "order.json")
        await cli.ok("pub", "orders", "--file", "-", "--raw", stdin=PRETTY)
        assert await stored(cli) == [document, document, PRETTY.decode()]

        (cli.home / "bad.json").write_bytes(b'{\n  "order": 1\n  "x": 2\n}\n')
        line = await cli.fails(USAGE, "pub", "orders", "--file", "bad.json")
        assert line.startswith("tcpmq: bad.json is not valid JSON: ")
        assert "(line 3, column 3)" in line and line.endswith("use --raw to send it as a string")
        line = await cli.fails(ERROR, "pub", "orders", "--file", "missing.json")
        assert line == "tcpmq: No such file or directory: missing.json"
        assert await stored(cli) == []


async def test_lines_mode(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await subscribed(cli)
        # The default for stdin: the first line parsed, so a later bad one is an error.
        line = await cli.fails(USAGE, "pub", "orders", stdin=b'1\n"two"\nbad\n')
        assert line == (
            "tcpmq: line 3 of stdin is not valid JSON: unexpected character, expected a JSON "
            "value (column 1); use --raw to send lines as strings "
            "(0 messages published, 3 lines read)"
        )
        # --lines says so explicitly: no hint about --file then.
        line = await cli.fails(USAGE, "pub", "orders", "--lines", stdin=PRETTY)
        assert "line 1 of stdin" in line and "--file" not in line
        assert await stored(cli) == []

        await cli.ok("pub", "orders", "--lines", stdin=b'1\n\n{"a": 2}\r\n')
        (cli.home / "events.jsonl").write_bytes(b'"x"\n"y"')
        result = await cli.ok("pub", "orders", "--lines", "--file", "events.jsonl")
        assert result.out == "published 2 messages to 'orders' (ids 3 to 4)\n"
        await cli.ok("pub", "orders", "--raw", stdin=b"plain\n\n")
        assert await stored(cli) == [1, {"a": 2}, "x", "y", "plain", ""]

        for args in (["x", "--file", "-"], ["x", "--lines"]):
            line = await cli.fails(USAGE, "pub", "orders", *args)
            assert "DATA" in line


async def test_both_forms_give_the_same_json_shape(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await subscribed(cli)
        one = orjson.loads((await cli.ok("pub", "orders", "1", "--json")).out)
        whole = orjson.loads(
            (await cli.ok("pub", "orders", "--file", "-", "--json", stdin=b"2")).out
        )
        lines = orjson.loads((await cli.ok("pub", "orders", "--json", stdin=b"3\n4\n")).out)
        assert one == {"published": 1, "first_id": 1, "last_id": 1, "unqueued": 0}
        assert whole == {"published": 1, "first_id": 2, "last_id": 2, "unqueued": 0}
        assert lines == {"published": 2, "first_id": 3, "last_id": 4, "unqueued": 0}


async def test_a_channel_without_queues_warns_or_fails(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        await client.channel_create("void")
        await client.close()
        result = await cli.run("pub", "void", "1", env=cli.as_admin())
        assert result.code == OK
        assert result.out == "published message 1 to 'void' (0 queues)\n"
        assert result.err == (
            "tcpmq: warning: channel 'void' has no queues: message 1 was accepted but reached "
            "no queue (subscribe with 'tcpmq sub void')\n"
        )
        result = await cli.run("pub", "void", "--json", env=cli.as_admin(), stdin=b"1\n2\n")
        assert orjson.loads(result.out)["unqueued"] == 2
        assert "all 2 messages were accepted but reached no queue" in result.err

        line = await cli.fails(ERROR, "pub", "void", "1", "--require-queue")
        assert line == (
            "tcpmq: channel 'void' has no queues: message 4 was accepted but reached no "
            "queue; subscribe first ('tcpmq sub void')"
        )
        line = await cli.fails(ERROR, "pub", "void", "--require-queue", stdin=b"1\n2\n")
        assert "all 2 messages were accepted but reached no queue" in line

        # With a queue there is nothing to say.
        await cli.ok("sub", "void", "--queue", "q")
        await cli.ok("pub", "void", "1", "--require-queue")


async def test_the_shell_splits_like_sh_so_quoted_json_is_json(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await subscribed(cli)
        script = b"""pub orders '{"a": 1}'\npub orders {"a":1}\npub orders --raw {"a":1}\n"""
        result = await cli.run("shell", env=cli.as_admin(), stdin=script)
        assert result.out.splitlines() == [
            "published message 1 to 'orders' (1 queue)",
            "published message 2 to 'orders' (1 queue)",
        ]
        # sh would have eaten the quotes too; the error shows what arrived.
        assert result.err.startswith("tcpmq: DATA '{a:1}' is not valid JSON: ")
        assert "quote JSON as in sh" in result.err
        assert await stored(cli) == [{"a": 1}, "{a:1}"]
