"""The examples of docs/guide.md, run as they stand against a real broker.

Every ```python block of the guide is a complete program. Each one runs in a
subprocess of its own, as a reader would run it, against a fresh in-process
server, with TCPMQ_URL and TCPMQ_TOKEN set. It must exit 0 within the time
limit, and what it prints must end with the ```text block that follows it in
the guide, if one does. An example that uses `reconnect` runs through a relay
that cuts all its connections as soon as it has printed its first line, and
must log that it reconnected: the guide's claims about surviving a lost
connection are tested, not only its syntax.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import running_server
from proxy import relay_to

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Every example ends by itself in a second or two; this only stops a broken one.
EXAMPLE_TIMEOUT = 60.0


def examples() -> list[tuple[str, str | None]]:
    """(program, the output shown right after it or None) for each python block."""
    blocks = [(match[1], match[2]) for match in FENCE.finditer(GUIDE.read_text())]
    found = []
    for index, (language, body) in enumerate(blocks):
        if language != "python":
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        found.append((body, following[1] if following[0] == "text" else None))
    return found


EXAMPLES = examples()


def test_the_guide_has_its_examples() -> None:
    assert len(EXAMPLES) >= 4
    assert sum("reconnect=" in program for program, _ in EXAMPLES) >= 1
    assert all(output for _, output in EXAMPLES)


@pytest.mark.parametrize(
    ("program", "output"),
    [pytest.param(p, o, id=f"example-{n}") for n, (p, o) in enumerate(EXAMPLES, start=1)],
)
async def test_guide_example(tmp_path: Path, program: str, output: str | None) -> None:
    script = tmp_path / "example.py"
    script.write_text(program)
    cut = "reconnect=" in program
    async with (
        running_server(tmp_path / "data") as server,
        relay_to(server.host, server.port) as relay,
    ):
        env = {
            **os.environ,
            "TCPMQ_URL": relay.url if cut else f"tcpmq://{server.host}:{server.port}",
            "TCPMQ_TOKEN": server.mint_token("admin"),
            "TICK_SECONDS": "0.05",
            "PYTHONUNBUFFERED": "1",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        lines: list[str] = []
        try:
            async with asyncio.timeout(EXAMPLE_TIMEOUT):
                while line := await process.stdout.readline():
                    lines.append(line.decode())
                    if cut and len(lines) == 1:
                        relay.cut()
                returncode = await process.wait()
                log = (await errors).decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            errors.cancel()
    printed = "".join(lines)
    assert returncode == 0, f"{printed}\n{log}"
    if output is not None:
        assert printed.endswith(output), printed
    if cut:
        assert "reconnected" in log, log
