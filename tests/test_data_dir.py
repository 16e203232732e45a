"""One process writes a data dir at a time: the lock, and what check, repair and a restart say."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from conftest import ADMIN_PASSWORD, make_config, running_server
from processes import STARTUP_TIMEOUT, clean_env, run_cli, serve
from tcpmq.auth import hash_password
from tcpmq.cli.main import main
from tcpmq.datadir import LOCK_FILE, DataDirInUse, DataDirLock, holder_pid, is_locked
from tcpmq.server import ADMIN_PASSWORD_ENV, Server
from tcpmq.storage.check import RepairReport

PASSWORD = "data-dir-test-pw"


def in_use(data_dir: Path, pid: int) -> str:
    return f"tcpmq: data dir {data_dir} is in use by another tcpmq (PID {pid}); stop it first\n"


async def ping(host: str, port: int) -> dict[str, object]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        hello = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
        assert hello["event"] == "hello"
        writer.write(b'{"op":"ping","id":1}\n')
        reply = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
        assert isinstance(reply, dict)
        return reply
    finally:
        writer.close()


async def serve_to_the_end(data_dir: Path) -> tuple[int, str]:
    """Run a `tcpmq serve` that is expected to give up; returns (exit code, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tcpmq", "serve", "--port", "0", "--data-dir", str(data_dir)),
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(TCPMQ_ADMIN_PASSWORD=PASSWORD),
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT)
    finally:
        if process.returncode is None:  # it started after all: do not leave it running
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_second_broker_on_the_same_dir_is_refused_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as first:
        pid = first.process.pid
        assert holder_pid(data_dir) == pid
        code, err = await serve_to_the_end(data_dir)
        assert code == 1
        assert err == in_use(data_dir, pid)
        assert (await ping(first.host, first.port))["ok"] is True

        first.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.process.wait(), STARTUP_TIMEOUT) == 0

    # Stopped cleanly: the next broker starts, and holds the lock in its turn.
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as second:
        assert (await ping(second.host, second.port))["ok"] is True
        assert holder_pid(data_dir) == second.process.pid


async def test_the_lock_dies_with_a_killed_broker(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as first:
        first.process.kill()
        assert await first.process.wait() == -signal.SIGKILL
    # The lock file is still there with the dead PID in it; the lock is not.
    assert (data_dir / LOCK_FILE).exists()
    assert not is_locked(data_dir)
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as second:
        assert (await ping(second.host, second.port))["ok"] is True


async def test_the_memory_store_creates_and_locks_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with (
        serve(data_dir, "--store", "memory") as first,
        serve(data_dir, "--store", "memory") as second,
    ):
        assert (await ping(first.host, first.port))["ok"] is True
        assert (await ping(second.host, second.port))["ok"] is True
    assert not data_dir.exists()


async def test_repair_refuses_a_live_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as server:
        code, out, err = await run_cli("repair", "--data-dir", str(data_dir))
        assert (code, out) == (1, "")
        assert err == in_use(data_dir, server.process.pid)
        assert (await ping(server.host, server.port))["ok"] is True


async def test_check_on_a_live_dir_says_so_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as server:
        code, out, err = await run_cli("check", "--data-dir", str(data_dir))
        assert code == 0, err
        first, *_, last = out.splitlines()
        assert first == (
            f"note: a broker (PID {server.process.pid}) is running on {data_dir}: this checks "
            "the store as it is on disk now; its last records may still be being written"
        )
        assert last.endswith(": ok")
        # The probe took nothing from the broker: a second broker is still refused.
        assert await serve_to_the_end(data_dir) == (1, in_use(data_dir, server.process.pid))
    code, out, _ = await run_cli("check", "--data-dir", str(data_dir))
    assert code == 0
    assert "note:" not in out


def test_repair_holds_the_lock_while_it_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "store").mkdir(parents=True)
    seen: list[bool] = []

    def repair_that_looks(directory: Path) -> RepairReport:
        seen.append(is_locked(data_dir))
        with pytest.raises(DataDirInUse):
            DataDirLock(data_dir).acquire()
        return RepairReport()

    monkeypatch.setattr("tcpmq.storage.check.repair", repair_that_looks)
    assert main(["repair", "--data-dir", str(data_dir)]) == 0
    assert seen == [True]
    assert not is_locked(data_dir)
    assert "nothing to repair" in capsys.readouterr().out


async def test_in_process_servers_share_the_rule(tmp_path: Path) -> None:
    async with running_server(tmp_path / "one") as one:
        same_dir = Server(make_config(tmp_path / "one"), admin_password=ADMIN_PASSWORD)
        with pytest.raises(DataDirInUse) as refused:
            await same_dir.start()
        assert refused.value.pid == holder_pid(tmp_path / "one")

        # A start that fails after taking the lock (here: the port is taken) gives it back.
        config = dataclasses.replace(make_config(tmp_path / "two"), port=one.port)
        taken_port = Server(config, admin_password=ADMIN_PASSWORD)
        with pytest.raises(OSError):
            await taken_port.start()
        assert not is_locked(tmp_path / "two")
    assert not is_locked(tmp_path / "one")


async def test_an_admin_password_that_does_not_match_is_warned_about(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD):
        pass
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD="another-password") as server:
        log = server.startup_log.decode()
        [warning] = [line for line in log.splitlines() if "WARNING" in line]
        assert "TCPMQ_ADMIN_PASSWORD differs from the stored password of user 'admin'" in warning
        assert "another-password" not in log
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD=PASSWORD) as server:
        assert b"WARNING" not in server.startup_log


async def test_an_admin_password_for_a_deleted_admin_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    async with running_server(data_dir) as server:
        users = server.app.users
        await users.create("root", "admin", hash_password("root-password"), time.time())
        await users.delete("admin")
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, ADMIN_PASSWORD)
    caplog.set_level(logging.WARNING, logger="tcpmq.server")
    async with running_server(data_dir):
        pass
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("TCPMQ_ADMIN_PASSWORD is ignored: user 'admin' no longer exists")
    assert ADMIN_PASSWORD not in caplog.text


async def test_a_server_that_cannot_listen_closes_its_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data) as first:
        taken = first.port
        config = dataclasses.replace(make_config(tmp_path / "other"), port=taken)
        server = Server(config, admin_password_hash=hash_password(ADMIN_PASSWORD))
        with pytest.raises(OSError):
            await server.start()
        # Its store was opened before the port was tried: closed again, its
        # sync thread gone and its data dir free.
        assert [t.name for t in threading.enumerate()].count("tcpmq-fsync") == 1
        assert not is_locked(tmp_path / "other")
