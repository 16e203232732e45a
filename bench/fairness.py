"""CPU fairness: how much hostile connections delay a well-behaved client's pings.

    python -m bench.fairness [--samples 400] [--seconds 20] [--hostile 4] [--shape NAME ...]

One `tcpmq serve --store memory`. A well-behaved client, logged in, keeps
one `ping` in flight and times `--samples` of them (or as many as fit in
`--seconds`): first alone, then while `--hostile` connections loop one of
the worst frames below as fast as the server takes them (each pipelines:
it writes while another task reads its replies). Prints the ping's
p50/p99/max per shape, the hostile frames the server answered per second,
and the server's CPU time per hostile frame.

The shapes (`--shape` picks some; all by default): authenticated ones of
max_frame_bytes (1 MiB) and unauthenticated ones of max_auth_frame_bytes
(8 KiB), each refused by the server, so the load can run for as long as
wanted without filling memory. Bounded: each shape stops after `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tcpmq.config import Limits

from .__main__ import prepare_process
from .servers import SPECS, Server

LIMITS = Limits()
FRAME = LIMITS.max_frame_bytes
AUTH_FRAME = LIMITS.max_auth_frame_bytes


def _fill(head: dict[str, object], key: str, element: object, size: int) -> bytes:
    """`head` with `key` a list of `element`, as long as fits in a line of `size` bytes."""
    one = len(orjson.dumps(element)) + 1
    base = len(orjson.dumps({**head, key: []})) + 1  # the newline
    return orjson.dumps({**head, key: [element] * ((size - base) // one)}) + b"\n"


def _keys(head: dict[str, object], size: int) -> bytes:
    """`head` with as many unknown keys (`"k1":0`, ...) as fit in `size` bytes."""
    room = size - len(orjson.dumps(head)) - 1  # the newline
    fields: dict[str, object] = dict(head)
    index = 0
    while True:
        key = f"k{index + 1}"
        room -= len(key) + 5  # ,"kN":0
        if room < 0:
            return orjson.dumps(fields) + b"\n"
        index += 1
        fields[key] = 0


# name: (authenticated, the frame). Each is refused, so none adds state.
SHAPES: dict[str, tuple[bool, Callable[[], bytes]]] = {
    # The issue's: 250,000 ids that are not integers (was 720 ms a frame).
    "ack-string-ids": (True, lambda: _fill({"op": "ack", "channel": "c"}, "ids", "1", FRAME)),
    # Valid integers, over max_batch: all validated, then refused.
    "ack-valid-ids": (
        True,
        lambda: _fill({"op": "ack", "channel": "c"}, "ids", 2**40, FRAME),
    ),
    "ping-unknown-keys": (True, lambda: _keys({"op": "ping"}, FRAME)),
    # The costliest JSON to parse per byte: empty arrays, one Python list each.
    # Refused by max_containers before it is parsed (was ~100 ms a frame).
    "ping-empty-arrays": (True, lambda: _fill({"op": "ping"}, "x", [], FRAME)),
    # Just within max_containers (x's arrays, x, y and the request), the rest
    # of the line one-character strings: about the most a frame still costs.
    "ping-arrays-at-limit": (
        True,
        lambda: _fill({"op": "ping", "x": [[]] * (LIMITS.max_containers - 3)}, "y", "1", FRAME),
    ),
    "preauth-ping-unknown-keys": (False, lambda: _keys({"op": "ping"}, AUTH_FRAME)),
    "preauth-login-unknown-keys": (False, lambda: _keys({"op": "login"}, AUTH_FRAME)),
    "preauth-empty-arrays": (False, lambda: _fill({"op": "pull"}, "x", [], AUTH_FRAME)),
}


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(server: Server, login: bool) -> Stream:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=4 * FRAME)
    await reader.readline()  # hello
    if login:
        request = {"op": "login", "user": "admin", "password": server.password}
        writer.write(orjson.dumps(request) + b"\n")
        reply = orjson.loads(await reader.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"login failed: {reply}")
    return reader, writer


async def _hostile(server: Server, shape: str, stop: asyncio.Event, answered: list[int]) -> None:
    authenticated, make = SHAPES[shape]
    frame = make()
    reader, writer = await _connect(server, authenticated)

    async def read() -> None:
        while await reader.readline():
            answered[0] += 1

    reading = asyncio.create_task(read())
    try:
        while not stop.is_set():
            writer.write(frame)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        reading.cancel()
        writer.close()


async def _pings(server: Server, samples: int, seconds: float) -> list[float]:
    reader, writer = await _connect(server, login=True)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while len(times) < samples and time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(b'{"op":"ping"}\n')
            line = await reader.readline()
            times.append(time.perf_counter() - started)
            if line != b'{"ok":true}\n':
                raise RuntimeError(f"ping answered {line!r}")
    finally:
        writer.close()
    return times


def _figures(label: str, times: list[float], extra: str = "") -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"| {label} | {len(ms)} | {statistics.median(ms):.2f} | {p99:.2f} | {ms[-1]:.2f} |{extra}"
    )


HEADER = (
    "| load | pings | p50 ms | p99 ms | max ms | hostile frames/s | server ms/frame |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = Server(SPECS["tcpmq"], Path(directory) / "data", ("--store", "memory"))
        await server.start()
        try:
            print(HEADER)
            alone = await _pings(server, args.samples, args.seconds)
            print(_figures("none", alone, " | |"), flush=True)
            for shape in args.shape or list(SHAPES):
                stop = asyncio.Event()
                answered = [0]
                hostile = [
                    asyncio.create_task(_hostile(server, shape, stop, answered))
                    for _ in range(args.hostile)
                ]
                await asyncio.sleep(0.5)  # the load under way
                cpu, count, started = server.cpu(), answered[0], time.perf_counter()
                times = await _pings(server, args.samples, args.seconds)
                elapsed = time.perf_counter() - started
                frames = answered[0] - count
                used = server.cpu() - cpu
                stop.set()
                for task in hostile:  # one may wait in drain() on a server not reading
                    task.cancel()
                await asyncio.gather(*hostile, return_exceptions=True)
                rate = frames / elapsed
                per_frame = used / frames * 1000 if frames else float("nan")
                label = f"{args.hostile} x {shape}"
                print(_figures(label, times, f" {rate:,.0f} | {per_frame:.2f} |"), flush=True)
        finally:
            if not server.alive():
                print(f"server DIED:\n{server.log_tail()}")
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20.0, help="at most, per load")
    parser.add_argument("--hostile", type=int, default=4)
    parser.add_argument("--shape", action="append", choices=list(SHAPES))
    args = parser.parse_args()
    prepare_process()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
