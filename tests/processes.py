"""`tcpmq serve` as a real process, for tests that need one (signals, crashes)."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(rb"tcpmq listening on (\S+):(\d+)")
STARTUP_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    host: str
    port: int
    startup_log: bytes
    # Lines logged after the start, and an event set at each new one.
    later_log: list[bytes] = field(default_factory=list)
    logged: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"tcpmq://{self.host}:{self.port}"

    async def log_line(self, text: bytes) -> bytes:
        """The first line logged after the start that contains `text`, once it is there."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:
                    for line in self.later_log:
                        if text in line:
                            return line
                    self.logged.clear()
                    await self.logged.wait()
        except TimeoutError:
            logged = b"".join(self.later_log[-20:]).decode(errors="replace")
            raise AssertionError(f"{text!r} was not logged; the last lines:\n{logged}") from None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCPMQ_ADMIN_PASSWORD"}
    env.update(extra)
    return env


@asynccontextmanager
async def serve(
    data_dir: Path,
    *args: str,
    max_file_bytes: int | None = None,
    max_open_files: int | None = None,
    **env: str,
) -> AsyncIterator[ServeProcess]:
    """Run `tcpmq serve` on an ephemeral port until the block ends (then kill it).

    Channels are public unless `args` say `--default-channel-access private`
    (which, coming later, overrides the harness's choice), as in `make_config`.

    `max_file_bytes` limits the size of the files it writes (RLIMIT_FSIZE): a
    write beyond it fails as on a full disk. `max_open_files` sets its
    RLIMIT_NOFILE, soft and hard (so the server cannot raise it).
    """

    def limit_file_size() -> None:
        if max_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death
            # The hard limit stays, so a test may lift the soft one later (prlimit).
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, hard))
        if max_open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcpmq",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        *("--default-channel-access", "public"),
        *args,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(**env),
        preexec_fn=limit_file_size,
    )
    assert process.stderr is not None
    log = b""
    try:
        # The readiness signal is the "listening" line, not a sleep.
        while (match := READY.search(log)) is None:
            line = await asyncio.wait_for(process.stderr.readline(), STARTUP_TIMEOUT)
            assert line, f"server exited before listening: {log.decode()}"
            log += line
        served = ServeProcess(process, match.group(1).decode(), int(match.group(2)), log)
        # Keep reading its log so a chatty server never blocks on a full pipe.
        drain = asyncio.ensure_future(_keep_log(process.stderr, served))
        try:
            yield served
        finally:
            drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `tcpmq ARGS` to its end; returns (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcpmq",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _keep_log(stream: asyncio.StreamReader, served: ServeProcess) -> None:
    # Bounded: a chatty server must not grow the test's memory without end.
    while line := await stream.readline():
        if len(served.later_log) < 10_000:
            served.later_log.append(line)
        served.logged.set()
