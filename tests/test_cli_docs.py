"""The command-line examples of README.md and docs/cli.md, run as they stand.

Every ```console block is a terminal transcript: `$ COMMAND` lines are run,
in order, one document against one fresh broker (admin password
`s3cret-passw0rd`, as in the README), each in `bash -c` on a pseudo-terminal
of its own, so prompts, Ctrl-C and progress lines behave as they do for a
person. What it prints must be the lines shown under it. A few things in
those lines are typed rather than printed:

- after a password prompt (`Password for USER at URL:`, `Password for the
  new user USER:`, `Again:`) the test types that user's password;
- a `^C` line means Ctrl-C, typed once the line before it has appeared;
- a question ending in `[y/N] ` is answered with what follows it on the
  line (the terminal echoes it, so the screen shows the line as written);
- after `$ tcpmq shell`, a line starting with the shell's prompt is typed
  at that prompt.

Times, round-trip times, rates, sizes and tokens differ from run to run and are
compared as placeholders; the broker's real address is shown as the
default one, tcpmq://127.0.0.1:7878.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli_helpers import Cli, Terminal
from tcpmq.config import Limits, ServerConfig
from tcpmq.server import Server

ROOT = Path(__file__).resolve().parent.parent
DOC_PASSWORD = "s3cret-passw0rd"
# The passwords the documents' users are given when a prompt asks.
PASSWORDS = {"admin": DOC_PASSWORD, "alice": "alice-passw0rd"}
DOC_URL = "tcpmq://127.0.0.1:7878"
FENCE = re.compile(r"^```console\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Shown without the space after the colon: Markdown editors strip trailing blanks.
PASSWORD_PROMPT = re.compile(
    r"^(?:Password for (?P<user>\S+) at \S+:|Password for the new user (?P<new>\S+):|Again:) ?$"
)
CONFIRM = re.compile(r"^(?P<question>.*\? \[y/N\] )(?P<answer>.*)$")
SHELL_PROMPT = re.compile(r"^(?P<prompt>(?:\S+@)?127\.0\.0\.1:7878> )(?P<line>.*)$")
VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "<time>"),
    (re.compile(r'("(?:created|published|expires)_at":)[0-9.e+]+'), r"\1<time>"),
    (re.compile(r'("rtt_ms":)[0-9.e+-]+'), r"\1<n>"),
    (re.compile(r"\b\d+\.\d+ ms\b"), "<n> ms"),
    (re.compile(r"\b[\d,]+/s\b"), "<n>/s"),
    (re.compile(r"\b\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)\b"), "<size>"),
    (re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]+"), "eyJ..."),
]


VOLATILE_ANYWHERE = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _ in VOLATILE))


def pattern_for(line: str) -> str:
    """A regex for `line` as it will appear: its volatile parts match anything."""
    pieces, position = [], 0
    for match in VOLATILE_ANYWHERE.finditer(line):
        pieces += [re.escape(line[position : match.start()]), ".+?"]
        position = match.end()
    return "".join([*pieces, re.escape(line[position:])])


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def steps(document: str) -> list[Step]:
    found: list[Step] = []
    for block in FENCE.findall(document):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append(Step(line[2:]))
            else:
                assert found, f"output before any command in:\n{block}"
                found[-1].expected.append(line)
    return found


def screen(raw: str) -> str:
    """What a terminal shows for `raw`: a carriage return rewrites its line."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    lines = []
    for line in text.split("\n"):
        parts = [part for part in line.split("\r") if part]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def normalized(lines: list[str]) -> list[str]:
    result = []
    for line in lines:
        for pattern, replacement in VOLATILE:
            line = pattern.sub(replacement, line)
        result.append(line.rstrip())
    while result and not result[-1]:
        result.pop()
    return result


class Reader:
    """Runs the steps of one document against one broker."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.host_port = cli.url.removeprefix("tcpmq://")
        bin_dir = cli.home / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "tcpmq"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tcpmq "$@"\n')
        wrapper.chmod(0o755)
        self.env = {"PATH": f"{bin_dir}{os.pathsep}{cli.env['PATH']}"}

    def local(self, text: str) -> str:
        """`text` as the test's broker prints it (its real address)."""
        return text.replace("127.0.0.1:7878", self.host_port)

    def shown(self, text: str) -> str:
        """`text` as the documents show it (the default address)."""
        return text.replace(self.cli.url, DOC_URL).replace(self.host_port, "127.0.0.1:7878")

    async def run(self, step: Step) -> list[str]:
        terminal = await Terminal.spawn_argv(self.cli, ["bash", "-c", step.command], self.env)
        try:
            password = ""
            previous = ""
            for line in step.expected:
                if match := PASSWORD_PROMPT.match(line):
                    await terminal.expect(re.escape(self.local(match.group(0).rstrip())))
                    if not line.startswith("Again"):
                        password = PASSWORDS[match.group("user") or match.group("new")]
                    terminal.type(password + "\r")
                elif (match := SHELL_PROMPT.match(line)) and step.command == "tcpmq shell":
                    await terminal.expect(re.escape(self.local(match.group("prompt"))))
                    terminal.type(match.group("line") + "\r")
                elif match := CONFIRM.match(line):
                    await terminal.expect(re.escape(self.local(match.group("question"))))
                    terminal.type(match.group("answer") + "\r")
                elif line == "^C":
                    await terminal.expect(pattern_for(self.local(previous)))
                    terminal.type("\x03")
                previous = line
            # Examples that fail on purpose show it with `; echo "exit $?"`.
            assert await terminal.wait() == 0, f"$ {step.command}\n{terminal.output}"
        finally:
            await terminal.close()
        return self.shown(screen(terminal.raw)).split("\n")


DOCUMENTS = ["README.md", "docs/cli.md"]


def test_the_documents_have_examples_to_run() -> None:
    for name in DOCUMENTS:
        assert len(steps((ROOT / name).read_text())) >= 5, name


@pytest.mark.parametrize("name", DOCUMENTS)
async def test_console_examples(tmp_path: Path, name: str) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", limits=Limits())
    server = Server(config, admin_password=DOC_PASSWORD)
    await server.start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        cli = Cli(server, home)
        # `tcpmq token` finds the broker's data directory the way an operator's would.
        cli.env["TCPMQ_DATA_DIR"] = str(config.data_dir)
        reader = Reader(cli)
        for step in steps((ROOT / name).read_text()):
            actual = await reader.run(step)
            assert normalized(actual) == normalized(step.expected), f"$ {step.command}"
    finally:
        await server.stop()
