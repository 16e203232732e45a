"""The metrics listener: /metrics scraped over a real socket and parsed as Prometheus does,
/healthz and /readyz, the token, and the refusal to expose metrics without one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ADMIN_PASSWORD_HASH, REPLY_TIMEOUT, make_config, open_user_wire, serving
from processes import run_cli
from tcpmq.config import ConfigError
from tcpmq.metricshttp import MAX_REQUEST_BYTES
from tcpmq.server import Server

TOKEN = "scrape-token-0123456789"


@asynccontextmanager
async def metrics_server(
    data_dir: Path,
    host: str = "127.0.0.1",
    token_file: Path | None = None,
    storage: dict[str, Any] | None = None,
) -> AsyncIterator[Server]:
    config = dataclasses.replace(
        make_config(data_dir, storage),
        metrics_listen=(host, 0),
        metrics_token_file=token_file,
    )
    async with serving(config) as server:
        yield server


async def http(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw HTTP request to the metrics listener; the status, headers and body."""
    assert server.metrics_address is not None
    host, port = server.metrics_address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.lower()] = value.strip()
        body = await asyncio.wait_for(
            reader.readexactly(int(headers["content-length"])), REPLY_TIMEOUT
        )
        return status, headers, body
    finally:
        writer.close()


async def get(server: Server, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{header}\r\n" for header in headers)
    return await http(server, f"GET {path} HTTP/1.1\r\nHost: m\r\n{extra}\r\n".encode())


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed by prometheus_client, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def queue(name: str) -> tuple[tuple[str, str], ...]:
    return (("channel", "orders"), ("queue", name))


async def test_metrics_after_known_traffic(tmp_path: Path) -> None:
    async with metrics_server(tmp_path / "data") as server:
        async with open_user_wire(server, "admin") as admin:
            await admin.ok("channel.create", name="orders")
            await admin.ok("subscribe", channel="orders", queue="billing")
            await admin.ok("subscribe", channel="orders", queue="audit")
            await admin.ok("publish", channel="orders", messages=[1, 2, 3, 4])
            pulled = await admin.ok("pull", channel="orders", queue="billing", max=3)
            await admin.ok("ack", channel="orders", queue="billing", ids=[1, 2])
            assert len(pulled["messages"]) == 3
            status, headers, body = await get(server, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(body)
    assert found[("tcpmq_messages_published_total", ())] == 4
    assert found[("tcpmq_messages_delivered_total", ())] == 3
    assert found[("tcpmq_messages_acked_total", ())] == 2
    assert found[("tcpmq_connections", ())] == 1
    assert found[("tcpmq_connections_authenticated", ())] == 1
    assert found[("tcpmq_channel_messages_published_total", (("channel", "orders"),))] == 4
    assert found[("tcpmq_queue_ready_messages", queue("billing"))] == 1
    assert found[("tcpmq_queue_inflight_messages", queue("billing"))] == 1
    assert found[("tcpmq_queue_ready_messages", queue("audit"))] == 4
    assert found[("tcpmq_queue_inflight_messages", queue("audit"))] == 0
    assert found[("tcpmq_queue_lag_messages", queue("billing"))] == 2  # ids 3 and 4
    assert found[("tcpmq_queue_messages_delivered_total", queue("billing"))] == 3
    assert found[("tcpmq_queue_messages_acked_total", queue("billing"))] == 2
    assert found[("tcpmq_queue_consumers", queue("audit"))] == 0
    assert found[("tcpmq_queue_oldest_message_age_seconds", queue("audit"))] >= 0
    assert found[("tcpmq_ready", ())] == 1
    assert found[("tcpmq_store_full", ())] == 0
    assert found[("tcpmq_store_disk_bytes", ())] > 0
    # fsync=always: the replies above waited for syncs, each timed.
    count = found[("tcpmq_fsync_seconds_count", ())]
    assert count >= 1
    assert found[("tcpmq_fsync_seconds_bucket", (("le", "+Inf"),))] == count
    assert found[("tcpmq_fsync_seconds_sum", ())] > 0
    assert found[("tcpmq_build_info", (("store", "log"), ("version", "0.1.0")))] == 1


async def test_healthz_readyz_and_what_is_not_served(tmp_path: Path) -> None:
    async with metrics_server(tmp_path / "data") as server:
        assert (await get(server, "/healthz"))[::2] == (200, b"ok\n")
        assert (await get(server, "/readyz"))[::2] == (200, b"ready\n")
        assert (await get(server, "/nope"))[0] == 404
        status, headers, _ = await http(server, b"POST /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        assert (status, headers["allow"]) == (405, "GET")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_BYTES + b"\r\n\r\n"
        assert (await http(server, huge))[0] == 431
        assert (await http(server, b"nonsense\r\n\r\n"))[0] == 400


async def test_keep_alive_serves_several_requests(tmp_path: Path) -> None:
    async with metrics_server(tmp_path / "data") as server:
        assert server.metrics_address is not None
        reader, writer = await asyncio.open_connection(*server.metrics_address)
        try:
            for path in (b"/healthz", b"/metrics", b"/readyz"):
                writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: m\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"Connection: keep-alive" in head
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), REPLY_TIMEOUT)
        finally:
            writer.close()


async def test_readyz_is_503_while_the_store_refuses_new_data(tmp_path: Path) -> None:
    # A reserve larger than any disk: the first probe finds too little free.
    full = {"min_free_bytes": 2**62}
    async with metrics_server(tmp_path / "data", storage=full) as server:
        status, _, body = await get(server, "/readyz")
        assert status == 503
        assert body.startswith(b"not ready: storage_full: ")
        assert (await get(server, "/healthz"))[0] == 200
        found = samples((await get(server, "/metrics"))[2])
        assert found[("tcpmq_ready", ())] == 0
        assert found[("tcpmq_store_full", ())] == 1


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "metrics-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


async def test_a_token_is_required_when_configured(tmp_path: Path, token_file: Path) -> None:
    # 127.0.0.2 is loopback too, bound here to go the way of a token-guarded listener.
    async with metrics_server(tmp_path / "data", "127.0.0.2", token_file) as server:
        assert server.metrics_address is not None
        assert server.metrics_address[0] == "127.0.0.2"
        status, headers, _ = await get(server, "/metrics")
        assert status == 401
        assert "Bearer" in headers["www-authenticate"]
        assert (await get(server, "/metrics", "Authorization: Bearer wrong"))[0] == 401
        assert (await get(server, "/metrics", "Authorization: Basic !!!"))[0] == 401
        status, _, body = await get(server, "/metrics", f"Authorization: Bearer {TOKEN}")
        assert status == 200 and b"tcpmq_messages_published_total" in body
        basic = base64.b64encode(f"prometheus:{TOKEN}".encode()).decode()
        assert (await get(server, "/metrics", f"Authorization: Basic {basic}"))[0] == 200
        wrong = base64.b64encode(b"prometheus:nope").decode()
        assert (await get(server, "/metrics", f"Authorization: Basic {wrong}"))[0] == 401
        # Health checks need no token: a load balancer cannot send one.
        assert (await get(server, "/healthz"))[0] == 200
        assert (await get(server, "/readyz"))[0] == 200


async def test_no_metrics_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = dataclasses.replace(make_config(data_dir), metrics_listen=("0.0.0.0", 9878))
    server = Server(config, admin_password_hash=ADMIN_PASSWORD_HASH)
    with pytest.raises(ConfigError, match="without --metrics-token-file"):
        await server.start()
    assert not data_dir.exists()  # refused before anything was opened or bound
    # And so does `tcpmq serve`, with the usage exit code.
    code, _, err = await run_cli(
        "serve", "--data-dir", str(data_dir), "--port", "0", "--metrics-listen", "0.0.0.0:9878"
    )
    assert code == 2
    assert "refusing --metrics-listen on 0.0.0.0" in err
    assert not data_dir.exists()


@pytest.fixture
def readable_token_file(token_file: Path) -> Path:
    token_file.chmod(0o644)
    return token_file


async def test_a_token_file_others_can_read_is_refused(
    tmp_path: Path, readable_token_file: Path
) -> None:
    config = dataclasses.replace(
        make_config(tmp_path / "data"),
        metrics_listen=("0.0.0.0", 9878),
        metrics_token_file=readable_token_file,
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        await Server(config, admin_password_hash=ADMIN_PASSWORD_HASH).start()
