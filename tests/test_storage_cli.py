"""The operator's view of a damaged store: `tcpmq serve` refuses, `check` and `repair` mend.

Everything runs as real processes on a store written by a real server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import ADMIN_PASSWORD, running_server
from processes import run_cli, serve
from tcpmq.client import connect
from tcpmq.storage.check import check
from tcpmq.storage.records import FORMAT_VERSION, HEADER
from test_storage import _flip_byte_in_first_publish, _three_publish_records, drain, store_dir


async def test_serve_refuses_a_damaged_store_with_one_line_naming_file_and_offset(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)
    segment, offset = _flip_byte_in_first_publish(data)
    code, _, err = await run_cli("serve", "--port", "0", "--data-dir", str(data))
    assert code == 1
    assert "Traceback" not in err
    refusal = [line for line in err.splitlines() if line.startswith("tcpmq: the store is damaged")]
    assert len(refusal) == 1
    assert f"{segment}: offset {offset}:" in refusal[0]
    assert "tcpmq check --data-dir" in err


async def test_check_reports_the_damage_and_repair_lets_the_broker_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _three_publish_records(data)

    code, out, err = await run_cli("check", "--data-dir", str(data))
    assert (code, err) == (0, "")
    assert "3 messages intact" in out and out.rstrip().endswith(": ok")

    segment, offset = _flip_byte_in_first_publish(data)
    damaged = segment.read_bytes()
    code, out, err = await run_cli("check", "--data-dir", str(data))
    assert code == 1
    assert f"damaged: {segment}: offset {offset}:" in out
    assert "tcpmq repair" in err
    assert segment.read_bytes() == damaged  # check changes nothing

    code, out, err = await run_cli("repair", "--data-dir", str(data))
    assert (code, err) == (0, "")
    assert f"repaired {segment.name}" in out
    assert (store_dir(data) / "damaged" / segment.name).exists()

    code, out, _ = await run_cli("check", "--data-dir", str(data))
    assert code == 0 and "2 messages intact" in out

    async with (
        serve(data) as server,
        connect(server.url, user="admin", password=ADMIN_PASSWORD) as client,
    ):
        assert await drain(client, "c") == ["message 1", "message 2"]


async def test_a_store_of_a_newer_version_is_refused_and_never_repaired(
    tmp_path: Path,
) -> None:
    # A downgrade: the files say a format this build cannot read. Not damage.
    data = tmp_path / "data"
    await _three_publish_records(data)
    (segment,) = sorted(store_dir(data).glob("*.log"))
    content = bytearray(segment.read_bytes())
    magic, kind, _, seq = HEADER.unpack_from(content)
    HEADER.pack_into(content, 0, magic, kind, FORMAT_VERSION + 1, seq)
    segment.write_bytes(bytes(content))
    newer = f"format version {FORMAT_VERSION + 1}; this build reads 1 to {FORMAT_VERSION}"

    code, _, err = await run_cli("serve", "--port", "0", "--data-dir", str(data))
    assert code == 1 and "Traceback" not in err
    assert f"not starting: {segment}: offset 0: written by a newer tcpmq ({newer})" in err
    assert "repair" not in err

    code, _, err = await run_cli("check", "--data-dir", str(data))
    assert code == 1
    assert "too old for the store" in err and "do not repair" in err

    code, out, err = await run_cli("repair", "--data-dir", str(data))
    assert (code, out) == (1, "")
    assert "not repairing" in err and newer in err
    assert segment.read_bytes() == bytes(content)  # untouched
    assert not (store_dir(data) / "damaged").exists()


async def test_check_on_a_directory_without_a_store_fails(tmp_path: Path) -> None:
    code, out, _ = await run_cli("check", "--data-dir", str(tmp_path / "nothing"))
    assert code == 1
    assert "no store here" in out
    code, _, err = await run_cli("repair", "--data-dir", str(tmp_path / "nothing"))
    assert code == 1 and "no store here" in err and "Traceback" not in err


async def test_a_disk_too_full_for_the_zeros_ahead_still_takes_every_write(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # 64 KiB is room for the records, not for the 1 MiB the log writes ahead.
    async with (
        serve(data, max_file_bytes=64 * 1024, TCPMQ_ADMIN_PASSWORD=ADMIN_PASSWORD) as server,
        connect(server.url, user="admin", password=ADMIN_PASSWORD) as client,
    ):
        await client.channel_create("c")
        await client.subscribe("c")
        for n in range(50):
            await client.publish("c", f"message {n}")
        server.process.kill()  # a crash: whatever zeros landed stay
    code, out, _ = await run_cli("check", "--data-dir", str(data))
    assert code == 0 and "50 messages intact" in out, out
    async with (
        serve(data) as server,
        connect(server.url, user="admin", password=ADMIN_PASSWORD) as client,
    ):
        assert await drain(client, "c") == [f"message {n}" for n in range(50)]


async def test_check_of_a_live_store_survives_compactions_under_it(tmp_path: Path) -> None:
    # A compaction removes the files it folded into a snapshot; a check that
    # listed them a moment before must list again, not fail with ENOENT.
    storage = {"segment_bytes": 4096, "compact_min_bytes": 4096, "fsync": "never"}
    async with running_server(tmp_path / "data", storage) as server:
        client = await connect(
            f"tcpmq://{server.host}:{server.port}", token=server.mint_token("admin")
        )
        await client.channel_create("c")
        await client.subscribe("c", "q")
        checks = 1000
        compactions = 0

        async def load() -> None:
            nonlocal compactions
            before = set(store_files(tmp_path))
            for _ in range(checks * 10):  # bounded; ends when the checks are done
                if done.is_set():
                    return
                await client.publish_batch("c", ["x" * 200] * 20)
                messages = await client.pull("c", "q", max=20)
                await client.ack("c", [m.id for m in messages], "q")
                now = set(store_files(tmp_path))
                compactions += bool(before - now)
                before = now

        done = asyncio.Event()
        loader = asyncio.create_task(load())
        try:
            for _ in range(checks):
                report = await asyncio.to_thread(check, store_dir(tmp_path / "data"))
                assert report.ok, report.problems
        finally:
            done.set()
            await loader
        assert compactions > 0  # files did vanish under the checks
        await client.close()


def store_files(tmp_path: Path) -> list[str]:
    return [p.name for p in store_dir(tmp_path / "data").iterdir()]
