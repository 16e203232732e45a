"""Durability of the embedded store, in-process: restarts, torn tails, corruption, compaction.

Crashes of a real process (SIGKILL under load) are in test_crash.py; here the
server is stopped and started in-process, and the store's files are cut and
damaged by hand between runs.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    ADMIN_PASSWORD,
    USER_PASSWORD,
    create_user,
    make_config,
    open_user_wire,
    open_wire,
    running_server,
)
from tcpmq.broker import Broker
from tcpmq.client import Client, connect
from tcpmq.config import Limits
from tcpmq.server import Server
from tcpmq.storage import FormatError
from tcpmq.storage.check import check, repair
from tcpmq.storage.log import FsyncPolicy, LogWriter, create_segment, segment_path
from tcpmq.storage.records import (
    HEADER,
    Kind,
    RecordType,
    encode_ids,
    encode_uid,
    header,
    scan,
)
from tcpmq.storage.recovery import list_files, recover
from tcpmq.storage.store import STORE_DIR


@asynccontextmanager
async def durable_server(data_dir: Path, **storage: Any) -> AsyncIterator[Server]:
    async with running_server(data_dir, storage) as server:
        yield server


@asynccontextmanager
async def admin_client(server: Server) -> AsyncIterator[Client]:
    url = f"tcpmq://{server.host}:{server.port}"
    async with connect(url, token=server.mint_token("admin")) as client:
        yield client


def store_dir(data_dir: Path) -> Path:
    return data_dir / STORE_DIR


def last_segment(data_dir: Path) -> Path:
    segments = list_files(store_dir(data_dir)).segments
    return segments[max(segments)]


async def drain(client: Client, channel: str, queue: str | None = None) -> list[Any]:
    """Pull and ack everything ready in the queue; returns the data in delivery order."""
    seen: list[Any] = []
    while messages := await client.pull(channel, max=1000, queue=queue):
        seen.extend(m.data for m in messages)
        await client.ack(channel, [m.id for m in messages], queue=queue)
    return seen


# -- restart ------------------------------------------------------------------


async def test_restart_keeps_users_channels_queues_settings_and_messages(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with durable_server(data) as server:
        async with open_user_wire(server, "admin") as admin:
            await create_user(admin, "alice")
        token = server.mint_token("alice")
        async with admin_client(server) as client:
            await client.channel_create("orders")
            await client.subscribe("orders", queue="billing", ack_timeout=7.5)
            await client.subscribe("orders", queue="audit")
            ids = (await client.publish_batch("orders", [{"n": n} for n in range(10)])).message_ids
            delivered = await client.pull("orders", queue="billing", max=4)
            await client.ack("orders", [m.id for m in delivered[:2]], queue="billing")
            # Two delivered but unacked: they must come back after the restart.
    async with durable_server(data) as server:
        async with open_wire(server) as wire:
            assert (await wire.ok("auth", token=token))["user"] == "alice"
            await wire.ok("login", user="alice", password=USER_PASSWORD)
        async with admin_client(server) as client:
            queues = {q.name: q for q in await client.queue_list("orders")}
            assert queues["billing"].ack_timeout == 7.5
            assert queues["billing"].depth == 8
            assert queues["audit"].depth == 10
            billing = await client.pull("orders", queue="billing", max=100)
            assert [m.data["n"] for m in billing] == list(range(2, 10))
            assert [m.id for m in billing] == ids[2:]
            # The two delivered before the restart keep their count.
            assert [m.attempt for m in billing] == [2, 2, 1, 1, 1, 1, 1, 1]
            # Ids go on from where they were, never reused.
            more = await client.publish("orders", "next")
            assert more.message_ids == [ids[-1] + 1]
            channel = await client.channel_get("orders")
            assert channel.published == 11


async def test_attempt_counts_survive_restarts_and_snapshots(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with durable_server(data) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        await client.subscribe("c", queue="other")
        await client.publish_batch("c", ["a", "b", "c"])
        for _ in range(3):  # "a" delivered three times
            [first] = await client.pull("c", max=1)
            await client.nack("c", [first.id])
        await client.pull("c", max=2)  # "a" a fourth time, "b" once; both left in flight
    async with durable_server(data) as server, admin_client(server) as client:
        pulled = await client.pull("c", max=10)
        assert [(m.data, m.attempt) for m in pulled] == [("a", 5), ("b", 2), ("c", 1)]
        # Counts are per queue: the other queue never delivered anything.
        assert [m.attempt for m in await client.pull("c", queue="other", max=10)] == [1, 1, 1]
        await client.ack("c", [m.id for m in pulled if m.data == "c"])
    # A snapshot (compaction) keeps the counts too, without the log before it.
    async with (
        durable_server(data, compact_min_bytes=4096) as server,
        admin_client(server) as client,
    ):
        await client.channel_create("filler")
        await client.subscribe("filler")
        while server.store.snapshots_taken == 0:
            await client.publish_batch("filler", ["x" * 100] * 50)
    async with durable_server(data) as server, admin_client(server) as client:
        pulled = await client.pull("c", max=10)
        assert [(m.data, m.attempt) for m in pulled] == [("a", 6), ("b", 3)]


async def test_messages_acked_out_of_order_leave_gaps_that_pulls_handle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with durable_server(data) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        ids = (await client.publish_batch("c", list(range(10)))).message_ids
        await client.pull("c", max=10)
        await client.ack("c", ids[2:7:2])  # the ids left ready after a restart have gaps
    async with durable_server(data) as server, admin_client(server) as client:
        delivered = await client.pull("c", max=10)
        kept = [n for n in range(10) if n not in (2, 4, 6)]
        assert [(m.id, m.data) for m in delivered] == [(ids[n], n) for n in kept]
        assert (await client.ack("c", [m.id for m in delivered])).acked == len(kept)


async def test_deletions_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with durable_server(data) as server, admin_client(server) as client:
        await client.channel_create("gone")
        await client.channel_create("kept")
        await client.subscribe("kept", queue="q1")
        await client.subscribe("kept", queue="q2")
        await client.publish("kept", 1)
        await client.queue_delete("kept", "q2")
        await client.subscribe("gone", queue="q")
        await client.publish("gone", 1)
        await client.channel_delete("gone")
        # A channel of the same name, created anew, must not inherit old messages.
        await client.channel_create("gone")
    async with durable_server(data) as server, admin_client(server) as client:
        assert sorted(c.name for c in await client.channel_list()) == ["gone", "kept"]
        assert [q.name for q in await client.queue_list("kept")] == ["q1"]
        assert await client.queue_list("gone") == []
        await client.subscribe("gone", queue="q")
        assert await client.pull("gone", queue="q", max=10) == []


async def test_deleted_user_loses_queues_across_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with durable_server(data) as server, open_user_wire(server, "admin") as admin:
        await create_user(admin, "bob")
        async with open_user_wire(server, "bob") as bob:
            await bob.ok("channel.create", name="c")
            await bob.ok("subscribe", channel="c")
        await admin.ok("user.delete", name="bob")
    async with durable_server(data) as server, admin_client(server) as client:
        assert await client.queue_list("c") == []


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_every_fsync_policy_keeps_data_across_a_clean_stop(
    tmp_path: Path, fsync: str
) -> None:
    data = tmp_path / "data"
    async with durable_server(data, fsync=fsync) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        await asyncio.gather(*(client.publish("c", n) for n in range(300)))
    async with durable_server(data, fsync=fsync) as server, admin_client(server) as client:
        assert await drain(client, "c") == list(range(300))


# -- group commit -----------------------------------------------------------------


async def test_concurrent_publishes_share_fsyncs(tmp_path: Path) -> None:
    async with durable_server(tmp_path / "data") as server:
        async with open_user_wire(server, "admin") as wire:
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c")
            before = server.store.syncs
            count = 200
            lines = b"".join(
                b'{"op":"publish","channel":"c","data":%d}\n' % n for n in range(count)
            )
            await wire.send_raw(lines)
            replies = [await wire.recv() for _ in range(count)]
        assert all(reply["ok"] for reply in replies)
        used = server.store.syncs - before
        # One write carried all of them: a handful of syncs, not one per publish.
        assert 1 <= used <= 10, used


async def test_replies_wait_for_the_disk_but_keep_their_order(tmp_path: Path) -> None:
    async with durable_server(tmp_path / "data") as server:
        async with open_user_wire(server, "admin") as wire:
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c")
            frames = []
            for n in range(50):
                frames.append(b'{"op":"publish","id":%d,"channel":"c","data":%d}\n' % (2 * n, n))
                frames.append(b'{"op":"ping","id":%d}\n' % (2 * n + 1))
            await wire.send_raw(b"".join(frames))
            ids = [(await wire.recv())["id"] for _ in range(100)]
        assert ids == list(range(100))


# -- torn tails -------------------------------------------------------------------


async def _three_publish_records(data: Path) -> None:
    async with durable_server(data) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        for n in range(3):
            await client.publish("c", f"message {n}")


def _queued(broker: Broker) -> list[bytes]:
    return list(broker.channels["c"].queues["admin"].fresh)


async def test_a_torn_last_record_is_cut_at_every_byte_offset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    segment = last_segment(data)
    intact = segment.read_bytes()
    records = scan(intact).records
    last_start = records[-1][0]
    for cut in range(last_start, len(intact)):
        segment.write_bytes(intact[:cut])
        broker = Broker(Limits())
        recovered = recover(store_dir(data), broker)
        heads = _queued(broker)
        assert len(heads) == 2, cut
        assert b'"message 1"' in heads[-1]
        assert recovered.torn_bytes == cut - last_start
        assert segment.stat().st_size == last_start
    segment.write_bytes(intact)


# -- zeros written ahead ----------------------------------------------------------


def _copy_store(data: Path, target: Path) -> None:
    """The store's files as they are this instant: what a crash would leave."""
    copy = store_dir(target)
    copy.mkdir(parents=True)
    for path in store_dir(data).iterdir():
        (copy / path.name).write_bytes(path.read_bytes())


async def test_a_crash_with_zeros_ahead_of_the_log_recovers_everything_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    async with durable_server(data) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        for n in range(3):
            await client.publish("c", f"message {n}")
        _copy_store(data, crashed)
    segment = last_segment(crashed)
    content = segment.read_bytes()
    end = scan(content).end
    assert len(content) > end and not any(content[end:]), "the writer keeps zeros ahead"
    assert check(store_dir(crashed)).ok
    broker = Broker(Limits())
    recovered = recover(store_dir(crashed), broker)
    assert [b'"message %d"' % n in head for n, head in enumerate(_queued(broker))] == [True] * 3
    assert recovered.torn_bytes == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert segment.stat().st_size == end


async def _fill_small_segments(data: Path, segment_bytes: int, batches: int) -> dict[int, Path]:
    """Publish `batches` batches of ten without compaction; returns the segments."""
    storage = {"segment_bytes": segment_bytes, "compact_min_bytes": 1 << 30}
    async with durable_server(data, **storage) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        for n in range(batches):
            await client.publish_batch("c", [f"{n}-{i}" for i in range(10)])
    return list_files(store_dir(data)).segments


async def test_segments_sealed_by_size_end_with_their_last_record(tmp_path: Path) -> None:
    # Sealed segments are never written again, so after the stop they are as sealed.
    segments = await _fill_small_segments(tmp_path / "data", 8192, 40)
    assert len(segments) > 3
    for seq in sorted(segments)[:-1]:
        content = segments[seq].read_bytes()
        assert scan(content).end == len(content), seq


async def test_rolled_and_closed_segments_are_cut_to_their_records(tmp_path: Path) -> None:
    # A roll seals the segment early (compaction does it); its zeros must go,
    # or a crash before the snapshot completes would look like lost records.
    directory = tmp_path / "store"
    directory.mkdir()
    os.close(create_segment(directory, 1))
    health_changes: list[None] = []
    writer = LogWriter(
        directory,
        seq=1,
        size=HEADER.size,
        policy=FsyncPolicy.ALWAYS,
        fsync_interval=0.05,
        segment_bytes=1 << 20,
        on_health_change=lambda: health_changes.append(None),
    )
    record = encode_uid(RecordType.QUEUE_DROP, 1)
    for _ in range(10):
        writer.append(record)
    synced = asyncio.get_running_loop().create_future()
    writer.when_durable(lambda: synced.set_result(None))
    await synced
    first, second = segment_path(directory, 1), segment_path(directory, 2)
    assert first.stat().st_size > HEADER.size + 10 * len(record)  # zeros ahead
    assert writer.roll() == 2
    writer.append(record)
    await writer.close()
    assert not health_changes and writer.stalled is None
    for path, count in ((first, 10), (second, 1)):
        content = path.read_bytes()
        result = scan(content)
        assert (len(result.records), result.end) == (count, len(content)), path


async def test_zeros_at_the_end_of_a_sealed_segment_refuse_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    segments = await _fill_small_segments(data, 4096, 20)
    sealed = segments[min(segments)]
    size = sealed.stat().st_size
    with sealed.open("ab") as out:
        out.write(bytes(4096))  # records lost from the middle of the log look like this
    with pytest.raises(FormatError, match=f"offset {size}"):
        recover(store_dir(data), Broker(Limits()))
    assert not check(store_dir(data)).ok


async def test_the_server_starts_after_a_torn_write_and_keeps_going(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    segment = last_segment(data)
    intact = segment.read_bytes()
    segment.write_bytes(intact[:-5])
    async with durable_server(data) as server, admin_client(server) as client:
        await client.publish("c", "after")
    async with durable_server(data) as server, admin_client(server) as client:
        assert await drain(client, "c") == ["message 0", "message 1", "after"]


# -- corruption -------------------------------------------------------------------


def _flip_byte_in_first_publish(data: Path) -> tuple[Path, int]:
    segment = last_segment(data)
    content = bytearray(segment.read_bytes())
    publishes = [offset for offset, kind, _ in scan(bytes(content)).records if kind == 5]
    target = publishes[0] + 20
    content[target] ^= 0x40
    segment.write_bytes(bytes(content))
    return segment, publishes[0]


async def test_corruption_in_the_middle_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    segment, offset = _flip_byte_in_first_publish(data)
    server = Server(make_config(data), admin_password=ADMIN_PASSWORD)
    with pytest.raises(FormatError) as refused:
        await server.start()
    assert str(segment) in str(refused.value)
    assert f"offset {offset}" in str(refused.value)
    assert refused.value.offset == offset


async def test_check_reports_and_repair_salvages_the_intact_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    healthy = check(store_dir(data))
    assert healthy.ok and healthy.messages == 3
    segment, offset = _flip_byte_in_first_publish(data)
    report = check(store_dir(data))
    assert not report.ok
    assert any(f"offset {offset}" in problem for problem in report.problems)
    repaired = repair(store_dir(data))
    assert repaired.repaired == [segment]
    assert (store_dir(data) / "damaged" / segment.name).exists()
    assert check(store_dir(data)).ok
    async with durable_server(data) as server, admin_client(server) as client:
        # The damaged record held one message; the others are intact.
        assert await drain(client, "c") == ["message 1", "message 2"]


def test_check_and_repair_leave_a_healthy_store_alone(tmp_path: Path) -> None:
    asyncio.run(_three_publish_records(tmp_path / "data"))
    directory = store_dir(tmp_path / "data")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert repair(directory).repaired == []
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


async def test_a_store_from_another_format_version_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    segment = last_segment(data)
    content = bytearray(segment.read_bytes())
    content[6] = 99  # the version field of the header
    segment.write_bytes(bytes(content))
    with pytest.raises(FormatError, match="format version 99"):
        recover(store_dir(data), Broker(Limits()))


# -- compaction -------------------------------------------------------------------


async def test_compaction_under_load_loses_nothing_and_bounds_disk_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    storage = {"segment_bytes": 8192, "compact_min_bytes": 16384}
    expected_backlog: list[int] = []
    async with durable_server(data, **storage) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c", queue="worker")
        await client.subscribe("c", queue="slow")
        worked: list[int] = []
        for round_ in range(40):
            batch = list(range(round_ * 50, round_ * 50 + 50))
            await client.publish_batch("c", batch)
            expected_backlog.extend(batch)
            worked.extend(await drain(client, "c", queue="worker"))
            # The slow queue keeps only its last 100 messages.
            surplus = min(len(expected_backlog) - 100, 1000)
            if surplus > 0:
                slow = await client.pull("c", queue="slow", max=surplus)
                await client.ack("c", [m.id for m in slow], queue="slow")
                del expected_backlog[: len(slow)]
        assert worked == list(range(2000))
        assert server.store.snapshots_taken >= 2
        live = sum(map(len, server.backend.broker.channels["c"].queues["slow"].fresh))
        # About twice the live data plus the compaction threshold, never the whole history.
        assert server.store.disk_bytes() <= 3 * live + 2 * 16384 + 8192
    async with durable_server(data, **storage) as server, admin_client(server) as client:
        assert await drain(client, "c", queue="worker") == []
        assert await drain(client, "c", queue="slow") == expected_backlog


async def test_a_leftover_temporary_snapshot_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    (store_dir(data) / ".0000000000000009.snap.tmp").write_bytes(b"half a snapshot")
    async with durable_server(data) as server, admin_client(server) as client:
        assert len(await drain(client, "c")) == 3
    assert not list(store_dir(data).glob("*.tmp"))


async def test_a_crash_between_snapshot_and_cleanup_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    storage = {"segment_bytes": 4096, "compact_min_bytes": 4096}
    async with durable_server(data, **storage) as server, admin_client(server) as client:
        await client.channel_create("c")
        await client.subscribe("c")
        for n in range(60):
            await client.publish_batch("c", [f"{n}-{i}" for i in range(10)])
        assert server.store.snapshots_taken >= 1
        newest = max(list_files(store_dir(data)).snapshots)
        # Keep a copy of a segment older than the snapshot, as if deletion never ran.
        files_before = {p.name: p.read_bytes() for p in store_dir(data).iterdir()}
    for name, content in files_before.items():
        path = store_dir(data) / name
        if not path.exists():
            path.write_bytes(content)
    async with durable_server(data, **storage) as server, admin_client(server) as client:
        got = await drain(client, "c")
    assert got == [f"{n}-{i}" for n in range(60) for i in range(10)]
    assert min(list_files(store_dir(data)).segments) >= newest


def test_records_carry_a_checksum_and_version() -> None:
    record = encode_ids(RecordType.ACK, 7, [1, 2, 3])
    length = int.from_bytes(record[:4], "little")
    assert zlib.crc32(record[8:]) == int.from_bytes(record[4:8], "little")
    assert length == len(record) - 8
    file_header = header(Kind.LOG, 1)
    assert file_header[:5] == b"TCPMQ" and len(file_header) == HEADER.size
    [(_, kind, _)] = scan(file_header + record).records
    assert kind is RecordType.ACK
