"""Online backups: `store.backup` / `tcpmq backup` while a publisher runs, checked and restored.

The restored broker is a second real server started on the backup: it must
hold every message whose publish was acknowledged before the backup began,
and none whose ack was.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from cli_helpers import cli_env
from conftest import ADMIN_PASSWORD, Wire, running_server
from processes import run_cli
from tcpmq.client import Client, connect
from tcpmq.server import Server

PUBLISHES = 3000  # the publisher's bound; it stops sooner once the backup is done


async def drain(client: Client, channel: str, queue: str) -> list[int]:
    ids: list[int] = []
    while messages := await client.pull(channel, queue, max=1000):
        ids += [message.id for message in messages]
        await client.ack(channel, ids[-len(messages) :], queue)
    return ids


async def test_a_backup_taken_under_load_restores_every_acknowledged_publish(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "backup"
    async with running_server(tmp_path / "data") as server:
        url = f"tcpmq://{server.host}:{server.port}"
        admin = await connect(url, token=server.mint_token("admin"))
        publisher = await connect(url, token=server.mint_token("admin"))
        try:
            await admin.channel_create("orders")
            await admin.subscribe("orders", "billing")
            await admin.publish_batch("orders", list(range(20)))
            # Acked before the backup: gone from the copy too.
            acked = [m.id for m in await admin.pull("orders", "billing", max=10)]
            assert (await admin.ack("orders", acked, "billing")).acked == 10

            confirmed: list[int] = []
            started = asyncio.Event()
            stop = asyncio.Event()

            async def publish() -> None:
                for n in range(PUBLISHES):
                    if stop.is_set():
                        return
                    result = await publisher.publish("orders", {"n": n})
                    confirmed.extend(result.message_ids)
                    if n == 50:
                        started.set()
                started.set()

            task = asyncio.ensure_future(publish())
            await started.wait()
            before = set(confirmed)  # acknowledged before the backup began
            result = await admin.backup(str(dest))
            stop.set()
            await task
        finally:
            await publisher.close()
            await admin.close()
        assert result.path == str(dest)
        assert (result.channels, result.queues) == (1, 1)
        assert result.bytes > 0
    assert len(before) > 50

    code, out, err = await run_cli("check", str(dest))
    assert code == 0, (out, err)
    assert out.splitlines()[-1] == f"{dest / 'store'}: ok"
    for name in ("secret", "users.json"):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700

    async with running_server(dest) as restored:
        # The copy's users and token secret: the admin's login works there.
        client = await connect(
            f"tcpmq://{restored.host}:{restored.port}", user="admin", password=ADMIN_PASSWORD
        )
        try:
            kept = await drain(client, "orders", "billing")
        finally:
            await client.close()
    assert before <= set(kept)
    assert set(range(11, 21)) <= set(kept)  # published, not acked
    assert not set(acked) & set(kept)


async def test_backup_refusals(tmp_path: Path, server: Server, admin: Wire, alice: Wire) -> None:
    error = await alice.error("store.backup", "forbidden", path=str(tmp_path / "b"))
    assert "admin" in error["message"]
    error = await admin.error("store.backup", "bad_request", path="relative/dir")
    assert error["field"] == "path"
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    error = await admin.error("store.backup", "already_exists", path=str(full))
    assert error["field"] == "path"
    assert (full / "something").read_text() == "x"
    inside = server.config.data_dir / "copy"
    error = await admin.error("store.backup", "bad_request", path=str(inside))
    assert "data dir" in error["message"]
    # An empty directory is taken, as a mount point would be.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (await admin.ok("store.backup", path=str(empty)))["path"] == str(empty)


@pytest.mark.every_store
async def test_only_the_log_store_backs_up(tmp_path: Path, admin: Wire, store: str) -> None:
    if store == "log":
        await admin.ok("store.backup", path=str(tmp_path / "b"))
        return
    error = await admin.error("store.backup", "bad_request", path=str(tmp_path / "b"))
    # The memory store has nothing on disk; the redis store's state is Redis's to back up.
    assert f"{store} store" in error["message"]
    assert not (tmp_path / "b").exists()


async def test_backup_on_the_command_line(tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        try:
            await client.channel_create("orders")
            await client.subscribe("orders", "billing")
            await client.publish("orders", "kept")
        finally:
            await client.close()
        out = (await cli.ok("backup", str(dest))).out
        assert out.startswith(f"backed up 1 channels and 1 queues into {dest} (")
        again = await cli.fails(1, "backup", str(dest))
        assert "already_exists" in again
    async with running_server(dest) as restored:
        client = await connect(
            f"tcpmq://{restored.host}:{restored.port}", user="admin", password=ADMIN_PASSWORD
        )
        try:
            assert [m.data for m in await client.pull("orders", "billing")] == ["kept"]
        finally:
            await client.close()
