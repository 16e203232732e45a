"""The servers under test: how each one is started, pinned, made ready, measured and stopped.

Every server runs as a child process under `taskset -c 0` (the load generator
keeps core 1), with a fresh data directory and a free loopback port. It is
ready when it says so on its log (tcpmq's "listening" line, Redis's "Ready to
accept connections", NATS's "Server is ready"), so no start waits longer than
the server needs. Its log is drained in the background and its last lines go
into the error if it dies. The open-files limit is inherited from the load
generator, which raises it before anything starts (see __main__).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .interference import process_cpu

PASSWORD = "bench-password-0123"  # every server's admin/default user
USER = "bench"  # the NATS user (Redis and tcpmq use their default admin user)
START_TIMEOUT = 120.0  # a restart with a 1M backlog must fit, with room to spare
STOP_TIMEOUT = 30.0
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Spec:
    """One column of the results: a server in one configuration."""

    name: str
    wire: str  # the protocol the load generator speaks to it: tcpmq, redis or nats
    label: str
    durable: bool  # keeps its data across a restart


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("tcpmq", "tcpmq", "tcpmq, durable default (--fsync always)", True),
        Spec("tcpmq-never", "tcpmq", "tcpmq --fsync never", True),
        Spec("redis", "redis", "Redis, in memory (no AOF, no RDB)", False),
        Spec("redis-aof", "redis", "Redis, appendonly yes, appendfsync always", True),
        Spec("nats", "nats", "NATS JetStream, file storage (default sync)", True),
        Spec("nats-sync", "nats", "NATS JetStream, file storage, sync_interval always", True),
        Spec("null", "tcpmq", "null broker: tcpmq framing, no broker work (uvloop)", False),
    )
}


def nats_binary() -> str | None:
    """The NATS server: $NATS_SERVER, else the bench venv's wheel, else PATH."""
    for candidate in (os.environ.get("NATS_SERVER"), str(BENCH_DIR / ".venv/bin/nats-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nats-server")


def available(spec: Spec) -> bool:
    if spec.wire == "redis":
        return shutil.which("redis-server") is not None
    if spec.wire == "nats":
        return nats_binary() is not None
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin_prefix() -> list[str]:
    """`taskset -c 0` when there is a second core for the load generator."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", "0"]
    return []


class Server:
    """One running server process of `spec`, its data in `data_dir`."""

    def __init__(self, spec: Spec, data_dir: Path, args: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.data_dir = data_dir
        self.args = args  # more command-line flags (tcpmq's bench/conn_*.py scripts)
        self.port = free_port()
        self.password = PASSWORD
        self.process: asyncio.subprocess.Process | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=40)
        self._drain: asyncio.Task[None] | None = None

    # -- the command line of each server ----------------------------------

    def _command(self) -> tuple[list[str], re.Pattern[bytes], dict[str, str]]:
        name, port, data = self.spec.name, str(self.port), str(self.data_dir)
        env = dict(os.environ)
        if self.spec.wire == "tcpmq" and name != "null":
            env["TCPMQ_ADMIN_PASSWORD"] = PASSWORD
            command = [sys.executable, "-m", "tcpmq", "serve", "--port", port, "--data-dir", data]
            # S5 opens thousands of connections from one address (Redis gets --maxclients).
            command += ["--max-connections-per-address", "20000"]
            if name == "tcpmq-never":
                command += ["--fsync", "never"]
            command += self.args
            return command, re.compile(rb"tcpmq listening on"), env
        if name == "null":
            command = [sys.executable, "-m", "bench.nullbroker", "--port", port]
            env["PYTHONPATH"] = str(BENCH_DIR.parent)
            return command, re.compile(rb"null broker listening"), env
        if self.spec.wire == "redis":
            command = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", data]
            command += ["--save", "", "--requirepass", PASSWORD, "--maxclients", "20000"]
            command += ["--protected-mode", "no", "--daemonize", "no"]
            if name == "redis-aof":
                command += ["--appendonly", "yes", "--appendfsync", "always"]
            else:
                command += ["--appendonly", "no"]
            return command, re.compile(rb"Ready to accept connections"), env
        binary = nats_binary()
        assert binary is not None
        config = self.data_dir / "nats.conf"
        sync = "\n  sync_interval: always" if name == "nats-sync" else ""
        config.write_text(
            f'listen: "127.0.0.1:{port}"\n'
            f'authorization {{ user: "{USER}", password: "{PASSWORD}" }}\n'
            f'jetstream {{\n  store_dir: "{data}/js"{sync}\n}}\n'
        )
        return [binary, "-c", str(config)], re.compile(rb"Server is ready"), env

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> float:
        """Launch the server and wait until it is ready; returns the seconds that took."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command, ready, env = self._command()
        started = time.perf_counter()
        self.process = await asyncio.create_subprocess_exec(
            *pin_prefix(),
            *command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        stream = self.process.stdout
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await stream.readline()
                    if not line:
                        raise RuntimeError(f"{self.spec.name} exited:\n{self.log_tail()}")
                    self._log.append(line.decode(errors="replace").rstrip())
                    if ready.search(line):
                        break
        except BaseException:
            await self.stop()
            raise
        elapsed = time.perf_counter() - started
        self._drain = asyncio.create_task(self._drain_log(stream))
        return elapsed

    async def _drain_log(self, stream: asyncio.StreamReader) -> None:
        # A full pipe would block the server's logging; keep the tail for errors.
        while line := await stream.readline():
            self._log.append(line.decode(errors="replace").rstrip())

    def log_tail(self) -> str:
        return "\n".join(self._log)

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within STOP_TIMEOUT."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            await self._drain
            self._drain = None

    async def restart(self) -> float:
        """Stop, then start again on the same data and port; returns the start time."""
        await self.stop()
        return await self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        """CPU seconds the server has used so far, all its live threads."""
        return process_cpu(self.pid)

    def rss(self) -> int:
        """Resident memory of the server process, in bytes (VmRSS)."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.spec.name} has no VmRSS")
