"""`tcpmq serve` and `tcpmq token` as real processes: first start, restart, signals."""

from __future__ import annotations

import asyncio
import re
import signal
import stat
from pathlib import Path

import orjson
import pytest

from conftest import Wire
from processes import run_cli, serve

CREATED = re.compile(rb"created user 'admin' with password (\S+)")


async def call(host: str, port: int, *requests: dict[str, object]) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        hello = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
        assert hello["event"] == "hello"
        writer.write(b"".join(orjson.dumps(r) + b"\n" for r in requests))
        return [orjson.loads(await asyncio.wait_for(reader.readline(), 10)) for _ in requests]
    finally:
        writer.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_first_start_generates_admin_password_once_and_secrets_are_private(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir) as server:
        match = CREATED.search(server.startup_log)
        assert match, server.startup_log
        password = match.group(1).decode()
        [reply] = await call(
            server.host, server.port, {"op": "login", "user": "admin", "password": password}
        )
        assert reply["ok"] is True and reply["role"] == "admin"
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "secret") == 0o600
    assert mode(data_dir / "users.json") == 0o600
    assert password.encode() not in (data_dir / "users.json").read_bytes()

    # Second start: users kept, nothing printed, the same password still works.
    async with serve(data_dir) as server:
        assert CREATED.search(server.startup_log) is None
        [reply] = await call(
            server.host, server.port, {"op": "login", "user": "admin", "password": password}
        )
        assert reply["ok"] is True


async def test_admin_password_from_environment(tmp_path: Path) -> None:
    async with serve(tmp_path / "data", TCPMQ_ADMIN_PASSWORD="from-the-env-123") as server:
        assert CREATED.search(server.startup_log) is None
        wrong, right = await call(
            server.host,
            server.port,
            {"op": "login", "user": "admin", "password": "not-the-password"},
            {"op": "login", "user": "admin", "password": "from-the-env-123"},
        )
        assert wrong["ok"] is False and wrong["error"]["code"] == "auth_failed"
        assert right["ok"] is True


async def test_sigterm_says_bye_and_exits_cleanly(tmp_path: Path) -> None:
    async with serve(tmp_path / "data", TCPMQ_ADMIN_PASSWORD="sigterm-test-pw") as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        await asyncio.wait_for(reader.readline(), 10)
        server.process.send_signal(signal.SIGTERM)
        bye = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
        assert bye == {
            "event": "bye",
            "error": {"code": "shutting_down", "message": "server is shutting down"},
        }
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert await asyncio.wait_for(server.process.wait(), 15) == 0


async def test_token_is_minted_offline_and_accepted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD="token-test-pw") as server:
        code, out, err = await run_cli(
            "token", "admin", "--ttl", "600", "--data-dir", str(data_dir)
        )
        assert code == 0, err
        token = out.strip()
        [reply] = await call(server.host, server.port, {"op": "auth", "token": token})
        assert reply["ok"] is True and reply["user"] == "admin"
        assert isinstance(reply["expires_at"], int)

    code, out, err = await run_cli("token", "nobody", "--data-dir", str(data_dir))
    assert code == 1 and out == ""
    assert "nobody" in err and "Traceback" not in err


@pytest.mark.parametrize("ttl", ["0", "-5"])
async def test_token_refuses_a_bad_ttl(tmp_path: Path, ttl: str) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, TCPMQ_ADMIN_PASSWORD="token-test-pw"):
        pass
    code, _, err = await run_cli("token", "admin", "--ttl", ttl, "--data-dir", str(data_dir))
    assert code == 1 and "--ttl" in err


async def test_serve_with_the_memory_store_uses_no_disk(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve(data_dir, "--store", "memory", TCPMQ_ADMIN_PASSWORD="memory-test-pw") as srv:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        wire = Wire(reader, writer)
        await wire.recv()
        await wire.ok("login", user="admin", password="memory-test-pw")
        assert (await wire.ok("server.info"))["store"] == "memory"
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c")
        await wire.ok("publish", channel="c", data="in memory")
        [message] = (await wire.ok("pull", channel="c"))["messages"]
        assert message["data"] == "in memory"
        srv.process.send_signal(signal.SIGTERM)
        assert await wire.recv() == SHUTTING_DOWN_BYE
        await wire.close()
        assert await asyncio.wait_for(srv.process.wait(), 15) == 0
    assert not data_dir.exists()


SHUTTING_DOWN_BYE = {
    "event": "bye",
    "error": {"code": "shutting_down", "message": "server is shutting down"},
}
