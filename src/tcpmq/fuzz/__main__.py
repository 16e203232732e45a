"""`python -m tcpmq.fuzz`: fuzz a `tcpmq serve` process of its own, for long, watching its memory.

The server runs as a child process on a free loopback port with a fresh data
directory and small limits (frame, queue and channel limits), so lines near
the frame limit are cheap and what the fuzz lines create stays bounded: the
server's memory must then stay flat however long the run. Its resident size
is sampled from /proc at every progress line. The run fails (exit status 1)
when a reply breaks the contract, any reply is `internal`, the server logs a
traceback, stops answering, or exits.

    python -m tcpmq.fuzz --frames 10000000 --seconds 2400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import orjson
import uvloop

from ..client import Client, connect
from ..errors import TcpmqError
from .runner import Budget, fuzz
from .session import ContractBroken, Tally

READY = re.compile(rb"tcpmq listening on (\S+):(\d+)")
START_TIMEOUT = 60.0
# The server's limits during a run (see the module docstring).
SERVER_LIMITS = (
    *("--max-frame-bytes", "16384", "--max-queue-messages", "2000"),
    *("--max-queue-bytes", "4194304", "--max-channels", "100", "--max-users", "100"),
)


def rss_bytes(pid: int) -> int | None:
    """The resident set size of process `pid` (Linux /proc), or None where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


class ServerLog:
    """Reads the server's log to its end, keeping the lines that mean a bug."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.bug_lines: list[str] = []

    async def read(self) -> None:
        while line := await self.stream.readline():
            text = line.decode(errors="replace").rstrip()
            if ("Traceback" in text or "internal error" in text) and len(self.bug_lines) < 50:
                self.bug_lines.append(text)


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.1f} MiB"


async def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tcpmq-fuzz-"))
    password = secrets.token_urlsafe(18)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tcpmq", "serve", "--port", "0", "--data-dir", str(data_dir)),
        *("--store", args.store, "--fsync", args.fsync, *SERVER_LIMITS),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TCPMQ_ADMIN_PASSWORD": password},
    )
    status = 1
    try:
        status = await _fuzz_server(args, process, data_dir, password)
        return status
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if args.data_dir is None:
            if status == 0:
                shutil.rmtree(data_dir, ignore_errors=True)
            else:
                print(f"the server's data dir is kept for a look: {data_dir}", file=sys.stderr)


async def _fuzz_server(
    args: argparse.Namespace,
    process: asyncio.subprocess.Process,
    data_dir: Path,
    password: str,
) -> int:
    assert process.stderr is not None
    log = b""
    while (match := READY.search(log)) is None:
        line = await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT)
        if not line:
            print(f"the server exited before listening:\n{log.decode()}", file=sys.stderr)
            return 1
        log += line
    url = f"tcpmq://{match.group(1).decode()}:{int(match.group(2))}"
    server_log = ServerLog(process.stderr)
    log_reader = asyncio.ensure_future(server_log.read())
    rss_start = rss_bytes(process.pid)
    rss_peak = rss_start or 0
    print(
        f"fuzzing {url} (store {args.store}, data {data_dir}, seed {args.seed}): "
        f"up to {args.frames:,} frames or {args.seconds:g} s; server RSS {_mib(rss_start)}",
        flush=True,
    )

    rss_warm: int | None = None

    def progress(tally: Tally, elapsed: float) -> None:
        nonlocal rss_peak, rss_warm
        rss = rss_bytes(process.pid)
        rss_peak = max(rss_peak, rss or 0)
        if rss_warm is None:
            rss_warm = rss  # after the first interval: caches, buffers and queues filled
        print(
            f"{elapsed:7.0f} s  {tally.frames:>11,} frames  {tally.frames / elapsed:8,.0f}/s  "
            f"connections {tally.connections:,}  internal {tally.internal}  RSS {_mib(rss)}",
            flush=True,
        )
        if process.returncode is not None:
            raise OSError(f"the server exited with status {process.returncode}")

    async def admin() -> Client:
        return await connect(url, user="admin", password=password, timeout=30)

    started = time.monotonic()
    failure = ""
    tally = Tally()
    try:
        await fuzz(
            url,
            admin,
            Budget(args.frames, args.seconds),
            tally,
            seed=args.seed,
            workers=args.workers,
            on_progress=progress,
            progress_every=args.progress_every,
        )
    except (ContractBroken, TcpmqError, OSError, TimeoutError) as exc:
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    rss_end = rss_bytes(process.pid)
    alive = process.returncode is None
    if alive:
        process.terminate()
    status = await asyncio.wait_for(process.wait(), 60)
    await log_reader
    summary = {
        "frames": tally.frames,
        "seconds": round(elapsed, 1),
        "frames_per_second": round(tally.frames / elapsed) if elapsed else 0,
        "bytes_sent": tally.bytes_sent,
        "connections": tally.connections,
        "internal": tally.internal,
        "rss_start": rss_start,
        "rss_after_first_interval": rss_warm,
        "rss_end": rss_end,
        "rss_peak": max(rss_peak, rss_end or 0),
        "server_alive_at_end": alive,
        "server_exit_status": status,
        "codes": dict(tally.codes.most_common()),
        "byes": dict(tally.byes),
        "seed": args.seed,
        "store": args.store,
        "failure": failure or None,
        "server_bug_lines": server_log.bug_lines[:10],
        "internal_lines": [line[:300].decode(errors="replace") for line in tally.internal_lines],
    }
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    bad = failure or tally.internal or server_log.bug_lines or not alive or status != 0
    return 1 if bad else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tcpmq.fuzz", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--frames", type=int, default=10_000_000, help="stop after this many")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--workers", type=int, default=4, help="connections fuzzing at once")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 32))
    parser.add_argument("--store", choices=("log", "memory"), default="log")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="always")
    parser.add_argument(
        "--data-dir",
        help="the server's data dir (default: a new temporary one, removed after a clean run)",
    )
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return uvloop.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
