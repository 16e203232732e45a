"""Real `redis-server` processes for the tests: one server, or a small Redis Cluster.

Each server listens on a free loopback port and keeps its files in its own
directory, so tests (and xdist workers) never share one by accident. Starting
returns once the server answers PING; a cluster, once every node reports
`cluster_state:ok`. Nothing here sleeps to wait: it polls the server with a
bounded deadline, since Redis announces its readiness nowhere else.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
CLUSTER_TIMEOUT = 30.0
POLL_INTERVAL = 0.02
# A port taken between our probe and the server's bind is tried again with another.
PORT_ATTEMPTS = 5
# A cluster node also listens on its port + 10000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10000

#: Every write on disk before its reply: for tests that kill Redis and count what survived.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def _die_with_parent() -> None:
    # In the child before exec: a test process killed by its timeout (or by
    # hand) takes its servers along instead of leaving them running.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def _port_free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A loopback port free now (and, for a cluster node, its bus port too)."""
    for _ in range(100):
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if not cluster_bus:
            return port
        bus = port + CLUSTER_BUS_OFFSET
        if bus < 65536 and _port_free(bus):
            return port
    raise RuntimeError("no free loopback port (with a free cluster bus port) found")


@dataclass
class RedisServer:
    """One `redis-server` process; `stop` and `restart` keep its port and directory."""

    directory: Path
    port: int
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def url(self, db: int = 0, prefix: str | None = None) -> str:
        query = "" if prefix is None else f"?prefix={prefix}"
        return f"redis://{HOST}:{self.port}/{db}{query}"

    def client(self, **options: object) -> redis.Redis:
        """A synchronous client, for the harness and for checks from tests."""
        options = {"socket_timeout": 5.0, **options}
        return redis.Redis(host=HOST, port=self.port, **options)  # type: ignore[arg-type]

    def start(self) -> None:
        """Start the process; returns once it answers PING.

        Raises: RuntimeError (with the end of its log) if it exits or stays silent.
        """
        assert self.process is None or self.process.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            *("redis-server", "--bind", HOST, "--port", str(self.port)),
            *("--dir", str(self.directory), "--logfile", str(self.log_path)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            # Later options override earlier ones: a test's choice wins.
            *self.args,
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        try:
            self._until_ready()
        except BaseException:
            self.kill()
            raise

    def _until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        with closing(self.client(socket_timeout=1.0, socket_connect_timeout=1.0)) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited at start:\n{self.log_tail()}")
                with suppress(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if client.ping():
                        return
                time.sleep(POLL_INTERVAL)
        raise RuntimeError(f"redis-server did not answer PING in time:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM and wait: Redis finishes writing its append-only file first."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash: only what was fsynced survives."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_redis(directory: Path, *args: str, cluster_bus: bool = False) -> RedisServer:
    """A started server on a free port (another one if the port was taken meanwhile)."""
    for attempt in range(PORT_ATTEMPTS):
        server = RedisServer(directory, free_port(cluster_bus=cluster_bus), tuple(args))
        try:
            server.start()
        except RuntimeError:
            port_taken = "Address already in use" in server.log_tail()
            if not port_taken or attempt == PORT_ATTEMPTS - 1:
                raise
            continue
        return server
    raise AssertionError("unreachable")


@contextmanager
def running_redis(directory: Path, *args: str) -> Iterator[RedisServer]:
    """A server until the block ends (`DURABLE` as `args` for fsync on every write)."""
    server = start_redis(directory, *args)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisClusterProcesses:
    """n masters (no replicas) joined into one Redis Cluster."""

    nodes: list[RedisServer]

    def url(self, prefix: str | None = None) -> str:
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        query = "" if prefix is None else f"?prefix={prefix}"
        return f"redis+cluster://{hosts}{query}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def make_cluster(directory: Path, n: int = 3, *args: str) -> RedisClusterProcesses:
    """Start n `--cluster-enabled yes` servers and join them; returns once the cluster is ok."""
    cluster = RedisClusterProcesses([])
    try:
        for index in range(n):
            node_args = (
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", "5000"),
                *args,
            )
            cluster.nodes.append(
                start_redis(directory / f"node{index}", *node_args, cluster_bus=True)
            )
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"{HOST}:{node.port}" for node in cluster.nodes),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLUSTER_TIMEOUT,
        )
        _until_cluster_ok(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _until_cluster_ok(cluster: RedisClusterProcesses) -> None:
    # Every node must agree: a client may ask any of them for the slot map.
    deadline = time.monotonic() + CLUSTER_TIMEOUT
    for node in cluster.nodes:
        with closing(node.client()) as client:
            while client.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") < 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ok in time:\n{node.log_tail()}")
                time.sleep(POLL_INTERVAL)


@contextmanager
def running_cluster(directory: Path, n: int = 3, *args: str) -> Iterator[RedisClusterProcesses]:
    cluster = make_cluster(directory, n, *args)
    try:
        yield cluster
    finally:
        cluster.stop()
