"""Running `tcpmq` as a user would: subprocesses against a real server, and a terminal.

`cli_env()` starts an in-process broker and gives a `Cli` whose commands run
as `python -m tcpmq ...` subprocesses with their own HOME and config
directory, `TCPMQ_URL` pointing at the broker and no credentials. Every
process starts in a session of its own, so nothing can reach the terminal
the tests were started from (getpass would otherwise open /dev/tty).
`Terminal` drives a process through a pseudo-terminal: type, then wait for
what should appear, with a timeout; never a sleep.
"""

from __future__ import annotations

import asyncio
import codecs
import fcntl
import os
import re
import struct
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import ADMIN_PASSWORD, running_server
from tcpmq.client import Client, connect
from tcpmq.server import Server

# Generous: a command takes a fraction of a second; this only stops a hung test.
TIMEOUT = 30.0
# Run ARGV with the terminal on stdin as its controlling terminal, as a login
# shell would have it: then Ctrl-C typed on it sends SIGINT and getpass can
# open /dev/tty. (The process leads a new session.)
ADOPT_TERMINAL = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Cli:
    def __init__(self, server: Server, home: Path) -> None:
        self.server = server
        self.url = f"tcpmq://{server.host}:{server.port}"
        self.home = home
        self.config = home / "config" / "tcpmq"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "TCPMQ_URL": self.url,
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }

    def admin_token(self) -> str:
        return self.server.mint_token("admin")

    def as_admin(self) -> dict[str, str]:
        return {"TCPMQ_TOKEN": self.admin_token()}

    async def client(self) -> Client:
        """A client-library connection as admin, for setting up and checking."""
        return await connect(self.url, token=self.admin_token())

    async def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
    ) -> asyncio.subprocess.Process:
        """Start `tcpmq ARGS`; stdin and stdout are pipes to the test unless given."""
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tcpmq",
            *args,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
            stdout=asyncio.subprocess.PIPE if stdout is None else stdout,
            stderr=asyncio.subprocess.PIPE,
            env={**self.env, **(env or {})},
            cwd=self.home,
            start_new_session=True,
        )

    async def run(
        self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
    ) -> Result:
        process = await self.start(
            *args, env=env, stdin=None if stdin is None else asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(stdin), TIMEOUT)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, env: dict[str, str] | None = None, **kw: bytes) -> Result:
        """Run a command as admin (unless `env` says otherwise) and expect exit 0."""
        result = await self.run(*args, env={**self.as_admin(), **(env or {})}, **kw)
        assert result.code == 0, result
        assert result.err == "", result
        return result

    async def fails(
        self, code: int, *args: str, env: dict[str, str] | None = None, **kw: bytes
    ) -> str:
        """Run a command as admin and expect exit `code` with one line on stderr; returns it."""
        result = await self.run(*args, env={**self.as_admin(), **(env or {})}, **kw)
        assert result.code == code, result
        assert result.out == "", result
        assert "Traceback" not in result.err, result
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tcpmq"), result
        return lines[0]


@asynccontextmanager
async def cli_env(tmp_path: Path) -> AsyncIterator[Cli]:
    home = tmp_path / "home"
    home.mkdir()
    async with running_server(tmp_path / "data") as server:
        yield Cli(server, home)


class Terminal:
    """A process on a pseudo-terminal: `type` keys, `expect` output."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self.master = master
        #: Everything the process wrote, as written.
        self.raw = ""
        #: The same without carriage returns and escape sequences, for matching.
        self.output = ""
        self._seen = 0
        self._eof = False
        self._changed = asyncio.Event()
        # A character may be split between two reads.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        asyncio.get_running_loop().add_reader(master, self._read)

    @classmethod
    async def spawn(cls, cli: Cli, *args: str, env: dict[str, str] | None = None) -> Terminal:
        """`tcpmq ARGS` on a new terminal."""
        return await cls.spawn_argv(cli, [sys.executable, "-m", "tcpmq", *args], env)

    @classmethod
    async def spawn_argv(
        cls, cli: Cli, argv: list[str], env: dict[str, str] | None = None
    ) -> Terminal:
        master, slave = os.openpty()
        # Wide enough that readline never scrolls a line sideways.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                ADOPT_TERMINAL,
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env={**cli.env, **(env or {})},
                cwd=cli.home,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        return cls(process, master)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every holder of the other side has closed it
            data = b""
        if not data:
            self._eof = True
            asyncio.get_running_loop().remove_reader(self.master)
        text = self._decoder.decode(data, final=not data)
        self.raw += text
        self.output += ANSI.sub("", text).replace("\r", "")
        self._changed.set()

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    async def expect(self, pattern: str) -> re.Match[str]:
        """Wait for `pattern` (a regex) in the output after what was matched before."""
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(TIMEOUT):
                while (match := regex.search(self.output, self._seen)) is None:
                    assert not self._eof, f"ended without {pattern!r}:\n{self.output}"
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} in time:\n{self.output}") from None
        self._seen = match.end()
        return match

    async def wait(self) -> int:
        """Wait for the process to end (its side of the terminal closed); its exit code."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not self._eof:
                    self._changed.clear()
                    await self._changed.wait()
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"still running:\n{self.output}") from None

    async def close(self) -> None:
        if not self._eof:
            asyncio.get_running_loop().remove_reader(self.master)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        os.close(self.master)


async def login(cli: Cli, user: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    result = await cli.run("login", "--user", user, "--password-stdin", stdin=password.encode())
    assert result.code == 0, result
