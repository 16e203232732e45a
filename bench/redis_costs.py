"""What one message costs a node and Redis, with the redis store: the figures a
scaling model needs (README, Cluster).

Starts a redis-server (no persistence) and one or two `tcpmq serve --store
redis://...` nodes on loopback, publishes `--messages` 100-byte messages (one
pipelined publisher) while one consumer pulls 100 at a time and acks them
(publisher on the first node, consumer on the last), and prints the rate and
the CPU seconds per message of each process, read from /proc, plus Redis's
own time per script call (INFO commandstats). Nothing is pinned: run it on an
idle machine. Bounded: stops after the messages or `--timeout` seconds, and
kills what it started.

With two nodes it then measures 500 wakes across nodes: a publish through
the first node to a pull parked on the second, sent to answered.

    python bench/redis_costs.py [--messages 200000] [--nodes 1|2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

PASSWORD = "bench-password-1"
BODY = b"x" * 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


def start_node(directory: Path, store: str, secret: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tcpmq",
            "serve",
            "--port",
            str(port),
            "--store",
            store,
            "--data-dir",
            str(directory),
            "--secret-file",
            str(secret),
            "--default-channel-access",
            "public",
        ],
        env={**os.environ, "TCPMQ_ADMIN_PASSWORD": PASSWORD},
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    for line in iter(process.stderr.readline, b""):
        if b"tcpmq listening on" in line:
            return process, port
    raise RuntimeError("the node did not start")


async def session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # hello
    writer.write(b'{"op":"login","user":"admin","password":"%s"}\n' % PASSWORD.encode())
    assert orjson.loads(await reader.readline())["ok"]
    return reader, writer


async def load(ports: list[int], messages: int) -> float:
    reader, writer = await session(ports[0])
    writer.write(
        b'{"op":"channel.create","name":"c"}\n{"op":"subscribe","channel":"c","queue":"q"}\n'
    )
    for _ in range(2):
        await reader.readline()
    consumer_reader, consumer_writer = await session(ports[-1])
    line = b'{"op":"publish","channel":"c","data":"%s"}\n' % BODY

    async def publish() -> None:
        for _ in range(0, messages, 500):
            writer.write(line * 500)
            await writer.drain()

    async def replies() -> None:
        for _ in range(messages):
            await reader.readline()

    async def consume() -> None:
        got = 0
        while got < messages:
            consumer_writer.write(b'{"op":"pull","channel":"c","queue":"q","max":100,"wait":1}\n')
            ids = [m["id"] for m in orjson.loads(await consumer_reader.readline())["messages"]]
            if ids:
                ack = {"op": "ack", "channel": "c", "queue": "q", "ids": ids}
                consumer_writer.write(orjson.dumps(ack) + b"\n")
                await consumer_reader.readline()
            got += len(ids)

    started = time.perf_counter()
    await asyncio.gather(publish(), replies(), consume())
    return time.perf_counter() - started


async def wakes(ports: list[int], count: int) -> list[float]:
    """Publish through the first node to a pull waiting on the last: seconds to the reply."""
    reader, writer = await session(ports[0])
    writer.write(b'{"op":"channel.create","name":"w"}\n{"op":"subscribe","channel":"w"}\n')
    for _ in range(2):
        await reader.readline()
    waiting_reader, waiting_writer = await session(ports[-1])
    took = []
    for _ in range(count):
        waiting_writer.write(b'{"op":"pull","channel":"w","queue":"admin","wait":5}\n')
        await asyncio.sleep(0.005)  # parked by then (a bench, not a test: no event to await)
        sent = time.perf_counter()
        writer.write(b'{"op":"publish","channel":"w","data":1}\n')
        reply = orjson.loads(await waiting_reader.readline())
        took.append(time.perf_counter() - sent)
        await reader.readline()
        ids = [m["id"] for m in reply["messages"]]
        ack = {"op": "ack", "channel": "w", "queue": "admin", "ids": ids}
        waiting_writer.write(orjson.dumps(ack) + b"\n")
        await waiting_reader.readline()
    return sorted(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH (bench/run installs it)")
    work = Path(tempfile.mkdtemp(prefix="tcpmq-redis-costs-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_process, redis_port = start_redis(work)
        processes.append(redis_process)
        store = f"redis://127.0.0.1:{redis_port}/0"
        nodes = [start_node(work / f"node{i}", store, work / "secret") for i in range(args.nodes)]
        processes += [process for process, _ in nodes]
        before = {p.pid: cpu_seconds(p.pid) for p in processes}
        seconds = asyncio.run(
            asyncio.wait_for(load([port for _, port in nodes], args.messages), args.timeout)
        )
        per_message = {
            p.pid: (cpu_seconds(p.pid) - before[p.pid]) / args.messages for p in processes
        }
        rate = args.messages / seconds
        print(f"{rate:,.0f} messages/s (each published, pulled and acked), {args.nodes} node(s)")
        print(f"redis-server: {per_message[redis_process.pid] * 1e6:.1f} us of CPU per message")
        for index, (process, _) in enumerate(nodes):
            print(f"node {index}: {per_message[process.pid] * 1e6:.1f} us of CPU per message")
        stats = redis.Redis(port=redis_port).info("commandstats")
        if args.nodes == 2:
            took = asyncio.run(asyncio.wait_for(wakes([port for _, port in nodes], 500), 60))
            p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
            print(f"wake across nodes: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms (500)")
        evalsha = stats.get("cmdstat_evalsha", {})
        print(
            f"redis scripts: {evalsha.get('calls', 0)} calls, "
            f"{evalsha.get('usec_per_call', 0):.0f} us per call"
        )
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
