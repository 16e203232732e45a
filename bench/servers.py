"""The servers under test: how each one is started, pinned, made ready, measured and stopped.

Every server runs as child processes under `taskset -c 0` (the load generator
keeps core 1), with a fresh data directory and free loopback ports. A process
is ready when it says so on its log (tcpmq's "listening" line, Redis's "Ready
to accept connections", NATS's "Server is ready"), so no start waits longer
than it needs. Its log is drained in the background and its last lines go
into the error if it dies; it is killed if the load generator dies (Linux's
parent-death signal). The open-files limit is inherited from the load
generator, which raises it before anything starts (see __main__).

The tcpmq-redis servers are tcpmq nodes with `--store redis://...` on a
redis-server the bench starts for them (or on `store_url`, see Server): one
node, or two on the same Redis whose ports the tcpmq peer alternates between.
Their CPU and memory figures are those of every process, Redis included.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from .interference import process_cpu

PASSWORD = "bench-password-0123"  # every server's admin/default user
USER = "bench"  # the NATS user (Redis and tcpmq use their default admin user)
START_TIMEOUT = 120.0  # a restart with a 1M backlog must fit, with room to spare
STOP_TIMEOUT = 30.0
BENCH_DIR = Path(__file__).resolve().parent
SECRET_FILE = "secret"  # a node's token-signing key in its data dir (tcpmq.auth)
REDIS_READY = re.compile(rb"Ready to accept connections")


@dataclass(frozen=True, slots=True)
class Spec:
    """One column of the results: a server in one configuration."""

    name: str
    wire: str  # the protocol the load generator speaks to it: tcpmq, redis or nats
    label: str
    durable: bool  # keeps its data across a restart
    # tcpmq nodes on a redis-server the bench starts: "always" (appendfsync
    # always) or "memory" (no AOF, no RDB); None: the server keeps its own state.
    shared_redis: str | None = None
    nodes: int = 1  # tcpmq nodes on that Redis; the peer alternates between them


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("tcpmq", "tcpmq", "tcpmq, durable default (--fsync always)", True),
        Spec("tcpmq-never", "tcpmq", "tcpmq --fsync never", True),
        Spec(
            "tcpmq-redis",
            "tcpmq",
            "tcpmq --store redis://, one node on Redis appendfsync always",
            True,
            "always",
        ),
        Spec(
            "tcpmq-redis-mem",
            "tcpmq",
            "tcpmq --store redis://, one node on Redis in memory (no AOF, no RDB)",
            True,  # S4 restarts the node, not Redis: the backlog stays
            "memory",
        ),
        Spec(
            "tcpmq-redis-x2",
            "tcpmq",
            "tcpmq --store redis://, two nodes on one Redis appendfsync always, "
            "clients alternating between them",
            True,
            "always",
            2,
        ),
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
    if spec.shared_redis is not None:  # the node needs redis-py, the bench a redis-server
        return shutil.which("redis-server") is not None and find_spec("redis") is not None
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


def redis_command(port: int, data_dir: Path, persistence: str, password: str | None) -> list[str]:
    """A redis-server on loopback: persistence "always" (AOF, fsync each write) or "memory"."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    command += ["--save", "", "--maxclients", "20000", "--daemonize", "no"]
    if password is not None:
        command += ["--requirepass", password, "--protected-mode", "no"]
    if persistence == "always":
        command += ["--appendonly", "yes", "--appendfsync", "always"]
    else:
        command += ["--appendonly", "no"]
    return command


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux kill the child when the load generator dies, if it can."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return arm


_PREEXEC = _die_with_parent()


class Process:
    """One child process: launched pinned, ready when its log says so, stopped for sure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=40)
        self._drain: asyncio.Task[None] | None = None

    async def start(
        self, command: list[str], ready: re.Pattern[bytes], env: dict[str, str]
    ) -> None:
        """Launch and wait (at most START_TIMEOUT) until a log line matches `ready`."""
        self.process = await asyncio.create_subprocess_exec(
            *pin_prefix(),
            *command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_PREEXEC,
        )
        assert self.process.stdout is not None
        stream = self.process.stdout
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await stream.readline()
                    if not line:
                        raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                    self._log.append(line.decode(errors="replace").rstrip())
                    if ready.search(line):
                        break
        except BaseException:
            await self.stop()
            raise
        self._drain = asyncio.create_task(self._drain_log(stream))

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

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.name} has no VmRSS")


def _store_url_with_prefix(url: str, prefix: str) -> str:
    """`url` with `prefix=`, unless it names one or is not a redis URL (memory, log)."""
    if "://" not in url or "prefix=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


class Server:
    """One server under test, its data in `data_dir`: one process, or tcpmq nodes and their Redis.

    `store_url` (`python -m bench --store-url`) puts the tcpmq-redis nodes on
    that store instead of a redis-server the bench starts; a redis URL gets a
    fresh `prefix=` per server (the keys are left there), anything else
    (`memory`, `log`) is passed as is, to check the harness without a backend.
    """

    def __init__(
        self,
        spec: Spec,
        data_dir: Path,
        args: tuple[str, ...] = (),
        store_url: str | None = None,
    ) -> None:
        self.spec = spec
        self.data_dir = data_dir
        self.args = args  # more command-line flags (tcpmq's bench/conn_*.py scripts)
        self.ports = [free_port() for _ in range(spec.nodes)]
        self.port = self.ports[0]
        self.password = PASSWORD
        shared = spec.shared_redis is not None
        self.nodes = [Process(f"{spec.name} node {i + 1}") for i in range(spec.nodes)]
        self.redis: Process | None = None  # the store's redis-server, when the bench runs it
        self.store_url: str | None = None
        if shared:
            prefix = f"bench-{secrets.token_hex(4)}:"
            if store_url is None:
                self.redis = Process(f"{spec.name} redis-server")
                self.redis_port = free_port()
                store_url = f"redis://127.0.0.1:{self.redis_port}/0"
            self.store_url = _store_url_with_prefix(store_url, prefix)

    def node_dir(self, node: int) -> Path:
        if self.spec.shared_redis is None:
            return self.data_dir
        return self.data_dir / f"node{node + 1}"

    # -- the command line of each server ----------------------------------

    def _command(self, node: int = 0) -> tuple[list[str], re.Pattern[bytes], dict[str, str]]:
        name, port, data = self.spec.name, str(self.ports[node]), str(self.node_dir(node))
        env = dict(os.environ)
        if self.spec.wire == "tcpmq" and name != "null":
            env["TCPMQ_ADMIN_PASSWORD"] = PASSWORD
            command = [sys.executable, "-m", "tcpmq", "serve", "--port", port, "--data-dir", data]
            # S5 opens thousands of connections from one address (Redis gets --maxclients).
            command += ["--max-connections-per-address", "20000"]
            if name == "tcpmq-never":
                command += ["--fsync", "never"]
            if self.store_url is not None:
                # As $TCPMQ_STORE, the same setting as --store, whose flag takes no URL yet.
                env["TCPMQ_STORE"] = self.store_url
            command += self.args
            return command, re.compile(rb"tcpmq listening on"), env
        if name == "null":
            command = [sys.executable, "-m", "bench.nullbroker", "--port", port]
            env["PYTHONPATH"] = str(BENCH_DIR.parent)
            return command, re.compile(rb"null broker listening"), env
        if self.spec.wire == "redis":
            persistence = "always" if name == "redis-aof" else "memory"
            command = redis_command(self.port, self.data_dir, persistence, PASSWORD)
            return command, REDIS_READY, env
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
        """Launch the server (its Redis first) and wait until it is ready; returns the seconds."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            if self.redis is not None:
                redis_dir = self.data_dir / "redis"
                redis_dir.mkdir(exist_ok=True)
                assert self.spec.shared_redis is not None
                command = redis_command(self.redis_port, redis_dir, self.spec.shared_redis, None)
                await self.redis.start(command, REDIS_READY, dict(os.environ))
            await self._start_nodes()
        except BaseException:
            await self.stop()
            raise
        return time.perf_counter() - started

    async def _start_nodes(self) -> None:
        """One after the other: the first makes the admin and the token secret the others share."""
        for index, node in enumerate(self.nodes):
            directory = self.node_dir(index)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if index > 0:
                _share_secret(self.node_dir(0), directory)
            await node.start(*self._command(index))

    async def stop(self) -> None:
        """Every node, then the Redis under them: SIGTERM, SIGKILL after STOP_TIMEOUT."""
        try:
            for node in self.nodes:
                await node.stop()
        finally:
            if self.redis is not None:
                await self.redis.stop()

    async def restart(self) -> float:
        """Stop, then start again on the same data and ports; returns the start time.

        On a shared Redis only the nodes restart: the store stays up, as a
        node's restart in a deployment would find it.
        """
        if self.redis is None:
            await self.stop()
            return await self.start()
        for node in self.nodes:
            await node.stop()
        started = time.perf_counter()
        try:
            await self._start_nodes()
        except BaseException:
            await self.stop()
            raise
        return time.perf_counter() - started

    # -- what the scenarios measure -----------------------------------------

    def _processes(self) -> list[Process]:
        return [*self.nodes, *([self.redis] if self.redis is not None else [])]

    def log_tail(self) -> str:
        return "\n".join(f"[{p.name}]\n{p.log_tail()}" for p in self._processes())

    def alive(self) -> bool:
        return all(process.alive() for process in self._processes())

    @property
    def pid(self) -> int:
        """The first node's process (the only one of most servers)."""
        return self.nodes[0].pid

    @property
    def pids(self) -> list[int]:
        """Every process of this server: its nodes and the Redis the bench runs for them."""
        return [process.pid for process in self._processes()]

    def cpu(self) -> float:
        """CPU seconds all the server's processes have used so far, all their live threads."""
        return sum(process_cpu(pid) for pid in self.pids)

    def rss(self) -> int:
        """Resident memory of all the server's processes, in bytes (VmRSS)."""
        return sum(process.rss() for process in self._processes())


def _share_secret(first: Path, other: Path) -> None:
    """Copy the first node's token secret (0600): a token of one node is good on every node."""
    source = first / SECRET_FILE
    if not source.exists():
        raise RuntimeError(f"{source} is missing: the first node made no token secret to share")
    target = other / SECRET_FILE
    if target.exists():  # a restart: it is there from the first start
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())
