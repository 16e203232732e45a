"""The documented sessions, replayed over a raw socket: the docs cannot drift from the server.

Every `> request` line of the session blocks in README.md and protocol.md is sent in
order and the reply compared with the `< reply` line that follows it. Times and
tokens differ from run to run, so those fields only have to be present and of the
right type; everything else must match exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import open_wire
from tcpmq.config import Limits, ServerConfig
from tcpmq.server import Server

ROOT = Path(__file__).resolve().parent.parent
DOC_PASSWORD = "s3cret-passw0rd"
VOLATILE_NUMBERS = {"created_at", "published_at", "expires_at"}
BLOCK = re.compile(r"```\n(< \{\"event\":\"hello\".*?)```", re.DOTALL)


def sessions(document: str) -> list[list[str]]:
    """The code blocks that start with the greeting: whole sessions, line by line."""
    return [block.strip().splitlines() for block in BLOCK.findall(document)]


def matches(expected: Any, actual: Any, key: str = "") -> bool:
    if key in VOLATILE_NUMBERS:
        return isinstance(actual, int | float) and not isinstance(actual, bool)
    if isinstance(expected, str) and expected.endswith("..."):
        return isinstance(actual, str) and actual.startswith(expected[:-3])
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(expected[k], actual[k], k) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a, key) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual) and type(expected) is type(actual)


DOCUMENTED = [
    pytest.param(name, number, lines, id=f"{name}-{number}")
    for name in ("README.md", "protocol.md")
    for number, lines in enumerate(sessions((ROOT / name).read_text()))
]


def test_the_docs_have_sessions_to_replay() -> None:
    assert {name for name, _, _ in (p.values for p in DOCUMENTED)} == {"README.md", "protocol.md"}


@pytest.mark.parametrize(("name", "number", "lines"), DOCUMENTED)
async def test_documented_session(tmp_path: Path, name: str, number: int, lines: list[str]) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", limits=Limits())
    server = Server(config, admin_password=DOC_PASSWORD)
    await server.start()
    try:
        async with open_wire(server) as wire:
            hello = orjson.loads(lines[0][2:])
            assert matches(hello, wire.hello), (hello, wire.hello)
            replayed = 0
            for index, line in enumerate(lines[1:], start=1):
                if not line.startswith("> "):
                    continue
                reply = await wire.call_raw(line[2:].encode())
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if following.startswith("< "):
                    expected = orjson.loads(following[2:])
                    assert matches(expected, reply), f"{name}: {line}\n{expected}\n{reply}"
                else:
                    assert reply["ok"] is True, reply
                replayed += 1
            assert replayed >= 5
    finally:
        await server.stop()
