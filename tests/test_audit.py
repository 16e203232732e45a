"""The audit log: connections, authentication and changes, by whom, never a secret."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from conftest import ADMIN_PASSWORD, USER_PASSWORD, create_user, open_wire
from processes import serve
from tcpmq.audit import JsonFormatter
from tcpmq.server import Server


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tcpmq.audit"]


async def test_audit_lines_say_who_did_what_and_never_a_secret(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcpmq.audit")
    async with open_wire(server) as wire:
        await wire.error("login", "auth_failed", user="admin", password="not-the-password")
        await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
        await create_user(wire, "alice")
        await wire.ok("channel.create", name="orders")
        await wire.ok("subscribe", channel="orders", queue="billing")
        await wire.ok("queue.delete", channel="orders", queue="billing")
        await wire.ok("channel.delete", name="orders")
        await wire.error("auth", "auth_failed", token="forged.token.here")
    lines = audit_lines(caplog)
    # (The disconnect comes once the server has seen the close: not awaited here.)
    events = [line.split()[0] for line in lines if not line.startswith("disconnect")]
    assert events == [
        "connect",
        "auth_failed",
        "auth",
        "user_created",
        "channel_created",
        "queue_created",
        "queue_deleted",
        "channel_deleted",
        "auth_failed",
    ]
    assert "peer=127.0.0.1:" in lines[1] and "user=admin" in lines[1]
    assert "by=admin" in lines[3] and "user=alice" in lines[3]
    everything = "\n".join(lines)
    for secret in (ADMIN_PASSWORD, USER_PASSWORD, "not-the-password", "forged.token.here"):
        assert secret not in everything


def test_json_format_is_one_object_per_line() -> None:
    record = logging.LogRecord("tcpmq.audit", logging.INFO, "x", 1, "auth %s", ("user=a",), None)
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["level"] == "info" and entry["logger"] == "tcpmq.audit"
    assert entry["message"] == "auth user=a" and entry["iso_time"].endswith("Z")


async def test_serve_logs_json_lines(tmp_path: Path) -> None:
    async with serve(tmp_path / "data", "--log-format", "json", TCPMQ_ADMIN_PASSWORD="json-log-pw"):
        pass
    async with serve(tmp_path / "data", "--log-format", "json") as server:
        lines = server.startup_log.decode().splitlines()
        entries = [orjson.loads(line) for line in lines]
        assert any(e["message"].startswith("tcpmq listening on") for e in entries)
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
