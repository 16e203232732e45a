"""A full disk: the broker stays up, refuses new data, serves its consumers, recovers.

Two ways to fill a disk, each on a real server: a small tmpfs mounted for the
test (we are root in CI; where mounting is impossible the test says so
loudly and skips), and a file size limit on a `tcpmq serve` process
(RLIMIT_FSIZE: a write past it fails with EFBIG, as on a full disk), which
works everywhere and reaches the path the reserve normally keeps us from: a
write that actually fails.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import (
    ADMIN_PASSWORD,
    REPLY_TIMEOUT,
    USER_PASSWORD,
    Wire,
    expect_error,
    open_user_wire,
    running_server,
)
from processes import ServeProcess, serve
from tcpmq.storage.log import FsyncPolicy, LogWriter, create_segment, segment_path
from tcpmq.storage.records import HEADER, RecordType, encode_uid, scan

MiB = 1024 * 1024
DISK_BYTES = 8 * MiB
# Far more than one publish appends between two probes (see StorageConfig).
RESERVE = 2 * MiB
STORAGE = {
    "min_free_bytes": RESERVE,
    "disk_check_interval": 0.05,
    "segment_bytes": MiB,
}
MESSAGE = "x" * 4000
BATCH = [MESSAGE] * 50  # 200 KB per publish


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of its own, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip(
            "NOT TESTED HERE: mounting a small tmpfs needs root; "
            "test_a_write_that_fails_* covers the same refusals with RLIMIT_FSIZE"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"NOT TESTED HERE: cannot mount a small tmpfs ({done.stderr.decode().strip()}); "
            "test_a_write_that_fails_* covers the same refusals with RLIMIT_FSIZE"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def until(condition: Callable[[], bool]) -> None:
    """Return once `condition` holds, looking once per turn of the loop the server runs on."""
    async with asyncio.timeout(REPLY_TIMEOUT):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def fill(wire: Wire, channel: str = "c") -> tuple[list[int], dict[str, Any]]:
    """Publish until refused; returns the ids published and the refusal."""
    published: list[int] = []
    for _ in range(4 * DISK_BYTES // (len(MESSAGE) * len(BATCH))):
        reply = await wire.call("publish", channel=channel, messages=BATCH)
        if not reply["ok"]:
            return published, reply
        published.extend(reply["message_ids"])
    raise AssertionError("the disk never filled")


async def drain_ids(wire: Wire) -> list[int]:
    ids: list[int] = []
    while messages := (await wire.ok("pull", channel="c", queue="q", max=1000))["messages"]:
        batch = [m["id"] for m in messages]
        await wire.ok("ack", channel="c", queue="q", ids=batch)
        ids.extend(batch)
    return ids


async def test_a_full_disk_refuses_new_data_serves_consumers_and_recovers(
    small_disk: Path,
) -> None:
    data = small_disk / "data"
    ballast = small_disk / "ballast"  # the space an operator frees later
    async with (
        running_server(data, STORAGE) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await admin.ok("channel.create", name="c")
        await admin.ok("subscribe", channel="c", queue="q")
        ballast.write_bytes(bytes(2 * MiB))
        published, refusal = await fill(admin)
        error = expect_error(refusal, "storage_full")
        assert "min_free_bytes" in error["message"]
        assert srv.store.disk_bytes() > DISK_BYTES // 4  # it did fill, not refuse early

        # Nothing that adds data is taken; no reply claims it was.
        await admin.error("publish", "storage_full", channel="c", data="one more")
        await admin.error("channel.create", "storage_full", name="d")
        await admin.error("subscribe", "storage_full", channel="c", queue="new")
        await admin.error(
            "user.create", "storage_full", name="carol", password=USER_PASSWORD, role="user"
        )
        # Consumers go on: pulls, acks and nacks are written into the reserve.
        messages = (await admin.ok("pull", channel="c", queue="q", max=100))["messages"]
        pulled = [m["id"] for m in messages]
        acked, nacked = pulled[: len(pulled) // 2], pulled[len(pulled) // 2 :]
        assert (await admin.ok("ack", channel="c", queue="q", ids=acked))["acked"] == len(acked)
        await admin.ok("nack", channel="c", queue="q", ids=nacked)

        # Space returns: the store sees it by itself, no request needed.
        ballast.unlink()
        await until(lambda: srv.store.full is None)
        published += (await admin.ok("publish", channel="c", data="after"))["message_ids"]

    async with running_server(data, STORAGE) as srv, open_user_wire(srv, "admin") as admin:
        assert await drain_ids(admin) == sorted(set(published) - set(acked))


async def _login(server: ServeProcess) -> Wire:
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=16 * MiB)
    wire = Wire(reader, writer)
    wire.hello = await wire.recv()
    await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
    return wire


@pytest.mark.parametrize("fsync", ["always", "never"])
async def test_a_write_that_fails_stalls_the_log_without_losing_or_claiming_anything(
    tmp_path: Path, fsync: str
) -> None:
    # Even with --fsync never, a reply waits while its data is not with the OS.
    data = tmp_path / "data"
    limit = 256 * 1024
    async with serve(
        data,
        "--fsync",
        fsync,
        "--disk-check-interval",
        "0.05",
        max_file_bytes=limit,
        TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as server:
        publisher, other = await _login(server), await _login(server)
        try:
            await publisher.ok("channel.create", name="c")
            await publisher.ok("subscribe", channel="c", queue="q")
            # More than the segment may hold, pipelined: written as one run,
            # which fails part way (EFBIG). The replies wait for the disk.
            lines = [
                orjson.dumps({"op": "publish", "channel": "c", "data": MESSAGE, "id": n})
                for n in range(2 * limit // len(MESSAGE))
            ]
            await publisher.send_raw(b"\n".join(lines) + b"\n")
            await server.log_line(b"log write failed")

            # The broker is up and says why it takes nothing new, at once.
            error = await other.error("publish", "storage_full", channel="c", data="refused")
            assert "cannot write" in error["message"]
            await other.error("channel.create", "storage_full", name="d")
            assert server.process.returncode is None

            # The disk has room again: the held replies go out. Publishes read
            # before the write failed were taken; any read after, refused.
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (hard, hard))
            replies = [await publisher.recv() for _ in lines]
            assert [reply["id"] for reply in replies] == list(range(len(lines)))
            taken = [reply["message_ids"][0] for reply in replies if reply["ok"]]
            for reply in replies:
                assert reply["ok"] or reply["error"]["code"] == "storage_full", reply
            assert taken, "the first run's write failed part way: it was taken"
            await server.log_line(b"the store takes new data again")
            taken += (await other.ok("publish", channel="c", data="after"))["message_ids"]
        finally:
            await publisher.close()
            await other.close()
        if fsync == "always":
            server.process.kill()  # a crash: only what was synced counts
        else:
            # With `never` a healthy log answers before its write, in the same
            # turn of the loop; a crash in between is that policy's risk, not
            # this test's subject: stop cleanly.
            server.process.terminate()
        await server.process.wait()

    async with serve(data, TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD) as server:
        consumer = await _login(server)
        try:
            assert await drain_ids(consumer) == taken
        finally:
            await consumer.close()


# -- a sync that fails ------------------------------------------------------------


async def test_a_failed_sync_is_written_again_and_only_then_counts_as_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An fsync error may have dropped the pages it was syncing (and the next
    # fsync may succeed without them): the writer writes them again.
    directory = tmp_path / "store"
    directory.mkdir()
    os.close(create_segment(directory, 1))
    health = asyncio.Event()
    writer = LogWriter(
        directory,
        seq=1,
        size=HEADER.size,
        policy=FsyncPolicy.ALWAYS,
        fsync_interval=0.05,
        segment_bytes=MiB,
        on_health_change=health.set,
    )
    real_fdatasync = os.fdatasync
    failures = [OSError(errno.EIO, "Input/output error")]

    def fdatasync(fd: int) -> None:  # the OS, failing once
        if failures:
            raise failures.pop()
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    record = encode_uid(RecordType.QUEUE_DROP, 1)
    writer.append(record)
    await health.wait()
    assert writer.stalled is not None and writer.stalled.errno == errno.EIO
    assert writer.durable == 0
    writer.append(record)  # taken, held until the log writes again
    health.clear()
    synced = asyncio.get_running_loop().create_future()
    writer.when_durable(lambda: synced.set_result(None))
    writer.retry()
    await health.wait()
    await synced
    assert writer.stalled is None
    await until(lambda: writer.durable == 2 * len(record))
    await writer.close()
    content = segment_path(directory, 1).read_bytes()
    result = scan(content)
    assert (len(result.records), result.end) == (2, len(content))


async def test_no_file_descriptor_left_for_a_new_segment_is_survived(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with serve(
        data,
        "--segment-bytes",
        "4096",
        "--compact-min-bytes",
        "4096",
        "--disk-check-interval",
        "0.05",
        TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as server:
        wire = await _login(server)
        try:
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c", queue="q")
            pid = server.process.pid
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            # Fewer descriptors than are open: no file may open, even once a
            # sealed segment is closed. Segment rolls, compactions and the
            # directory syncs fail (EMFILE).
            held = len(os.listdir(f"/proc/{pid}/fd"))
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (held - 2, hard))
            lines = [
                orjson.dumps({"op": "publish", "channel": "c", "data": f"{n:04d}" + "x" * 4000})
                for n in range(20)  # 20 segments' worth
            ]
            for line in lines:
                await wire.send_raw(line + b"\n")
            # A roll fails, or the directory sync after the last roll did.
            await server.log_line(b"Too many open files")
            assert server.process.returncode is None
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            # Every publish is answered: taken, or refused while the log was
            # stalled (the taken ones' replies waited for the sync to be redone).
            replies = [await wire.recv() for _ in lines]
            published = [reply["message_ids"][0] for reply in replies if reply["ok"]]
            for reply in replies:
                assert reply["ok"] or reply["error"]["code"] == "storage_full", reply
            published += (await wire.ok("publish", channel="c", data="after"))["message_ids"]
            assert server.process.returncode is None
        finally:
            await wire.close()
        server.process.kill()
        await server.process.wait()

    async with serve(data, TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD) as server:
        consumer = await _login(server)
        try:
            assert await drain_ids(consumer) == published
        finally:
            await consumer.close()
