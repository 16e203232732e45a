"""Which storage engine for the durable default? Measure, don't guess.

Compares the two designs the durability issue names, on this machine's disk,
with every commit made durable (`fsync=always`):

- an append-only log: one `write` of a batch of checksummed records, then
  one `fdatasync` (what group commit does per event-loop batch);
- SQLite in WAL mode with `synchronous=FULL`: one transaction per batch.

For each batch size it prints committed messages per second and the mean
commit latency. Every loop is bounded by a message count.

    python bench/storage_choice.py [--dir DIR] [--messages N]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import struct
import tempfile
import time
import zlib
from pathlib import Path

PAYLOAD = b'"' + b"x" * 98 + b'"'  # a 100-byte JSON string
BATCH_SIZES = (1, 10, 100, 1000)


def append_log(directory: Path, batch: int, total: int) -> tuple[float, float]:
    path = directory / "bench.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    commits = 0
    started = time.perf_counter()
    message_id = 0
    try:
        while message_id < total:
            records = []
            for _ in range(batch):
                message_id += 1
                body = struct.pack("<BQI", 1, message_id, len(PAYLOAD)) + PAYLOAD
                records.append(struct.pack("<II", len(body), zlib.crc32(body)) + body)
            os.write(fd, b"".join(records))
            os.fdatasync(fd)
            commits += 1
    finally:
        os.close(fd)
        path.unlink()
    elapsed = time.perf_counter() - started
    return message_id / elapsed, elapsed / commits * 1000


def sqlite_wal(directory: Path, batch: int, total: int) -> tuple[float, float]:
    path = directory / "bench.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, crc INTEGER, data BLOB)")
    commits = 0
    message_id = 0
    started = time.perf_counter()
    try:
        while message_id < total:
            rows = []
            for _ in range(batch):
                message_id += 1
                rows.append((message_id, zlib.crc32(PAYLOAD), PAYLOAD))
            db.execute("BEGIN")
            db.executemany("INSERT INTO messages VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            commits += 1
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    return message_id / elapsed, elapsed / commits * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"{'batch':>6} {'engine':<12} {'msgs/s':>10} {'ms/commit':>10}")
        for batch in BATCH_SIZES:
            total = max(batch, min(args.messages, batch * 2000))
            for name, run in (("append-log", append_log), ("sqlite-wal", sqlite_wal)):
                rate, latency = run(directory, batch, total)
                print(f"{batch:>6} {name:<12} {rate:>10,.0f} {latency:>10.3f}")


if __name__ == "__main__":
    main()
