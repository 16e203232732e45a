"""What TLS costs: handshake time, and S1-like throughput over TLS against clear text.

`python -m bench.tls [--messages N] [--connections N] [--store memory|log]`
starts `tcpmq serve` twice (clear text, then TLS with a trustme certificate),
and against each measures:

- connect: TCP connect (and TLS handshake) until the greeting has arrived,
  `--connections` times one after the other: median and p99 in ms;
- S1-like: one publisher pipelining `--messages` 100-byte publishes (at most
  1,000 unanswered), one consumer pulling batches of 100 and acking each;
  deliveries/s from the first publish to the last delivery.

The client is asyncio's TLS on uvloop, the server tcpmq's TLS layer; both run
on this machine, so the figures are for comparing the two transports, not
absolute. Needs trustme (the `test` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import trustme
import uvloop

PASSWORD = "bench-passw0rd"
READY = re.compile(rb"tcpmq listening on \S+:(\d+)")
PAYLOAD = "x" * 100
WINDOW = 1000


@asynccontextmanager
async def server(data_dir: Path, store: str, tls_args: list[str]) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tcpmq", "serve", "--port", "0", "--store", store),
        *("--data-dir", str(data_dir), *tls_args),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TCPMQ_ADMIN_PASSWORD": PASSWORD},
    )
    assert process.stderr is not None
    try:
        port = await _port(process.stderr)
        # Keep reading the log (an audit line per connection) so the pipe never fills.
        drain = asyncio.create_task(_discard(process.stderr))
        yield port
        drain.cancel()
    finally:
        process.terminate()
        await process.wait()


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _port(stderr: asyncio.StreamReader) -> int:
    log = b""
    while (match := READY.search(log)) is None:
        line = await asyncio.wait_for(stderr.readline(), 30)
        if not line:
            raise RuntimeError(f"server exited: {log.decode()}")
        log += line
    return int(match.group(1))


async def open_wire(
    port: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if tls is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    else:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1", limit=1 << 24
        )
    await reader.readline()  # hello
    return reader, writer


async def call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **request: object
) -> dict[str, object]:
    writer.write(orjson.dumps(request) + b"\n")
    reply = orjson.loads(await reader.readline())
    assert reply["ok"], reply
    return reply


async def connect_times(port: int, tls: ssl.SSLContext | None, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        _, writer = await open_wire(port, tls)
        times.append((time.perf_counter() - started) * 1000)
        writer.close()
        await writer.wait_closed()
    return times


async def s1(port: int, tls: ssl.SSLContext | None, messages: int) -> float:
    pub_r, pub_w = await open_wire(port, tls)
    con_r, con_w = await open_wire(port, tls)
    for reader, writer in ((pub_r, pub_w), (con_r, con_w)):
        await call(reader, writer, op="login", user="admin", password=PASSWORD)
    await call(pub_r, pub_w, op="channel.create", name="s1")
    await call(con_r, con_w, op="subscribe", channel="s1", queue="q")
    publish = orjson.dumps({"op": "publish", "channel": "s1", "data": PAYLOAD}) + b"\n"
    window = asyncio.Semaphore(WINDOW)

    async def publisher() -> None:
        async def replies() -> None:
            for _ in range(messages):
                await pub_r.readline()
                window.release()

        reading = asyncio.create_task(replies())
        for _ in range(messages):
            await window.acquire()
            pub_w.write(publish)
            if pub_w.transport.get_write_buffer_size() > 1 << 20:
                await pub_w.drain()
        await reading

    async def consumer() -> None:
        got = 0
        pull = orjson.dumps({"op": "pull", "channel": "s1", "queue": "q", "max": 100, "wait": 5})
        while got < messages:
            con_w.write(pull + b"\n")
            batch = orjson.loads(await con_r.readline())["messages"]
            got += len(batch)
            ids = [m["id"] for m in batch]
            con_w.write(
                orjson.dumps({"op": "ack", "channel": "s1", "queue": "q", "ids": ids}) + b"\n"
            )
            await con_r.readline()

    started = time.perf_counter()
    await asyncio.gather(publisher(), consumer())
    elapsed = time.perf_counter() - started
    for writer in (pub_w, con_w):
        writer.close()
    return messages / elapsed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        ca = trustme.CA()
        pem = directory / "server.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        pem.chmod(0o600)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        setups: list[tuple[str, list[str], ssl.SSLContext | None]] = [
            ("clear text", [], None),
            ("TLS", ["--tls-cert", str(pem), "--tls-key", str(pem)], client),
        ]
        for name, tls_args, context in setups:
            async with server(directory / name.replace(" ", "-"), args.store, tls_args) as port:
                times = await connect_times(port, context, args.connections)
                rate = await s1(port, context, args.messages)
            p99 = statistics.quantiles(times, n=100)[98]
            print(
                f"{name:>10}: connect+greeting median {statistics.median(times):.2f} ms, "
                f"p99 {p99:.2f} ms; S1-like {rate:,.0f} deliveries/s "
                f"({args.messages} messages, --store {args.store})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.tls", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--store", choices=["memory", "log"], default="memory")
    uvloop.run(main(parser.parse_args()))
