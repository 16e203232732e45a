"""The `stats` op and `tcpmq stats` / `tcpmq top`: counts, depths and in-flight after known traffic.

Real servers over real sockets. Rates depend on the clock, so only their
shape is checked; the counters behind them are checked exactly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli_helpers import cli_env
from conftest import Wire, open_wire, until_pull_waits
from tcpmq.server import Server

STATS_KEYS = {
    *("uptime", "connections", "rates", "totals", "memory_bytes", "store"),
    *("channels", "queues"),
}
QUEUE_KEYS = {
    *("name", "channel", "owner", "created_at", "ack_timeout", "depth", "inflight"),
    *("consumers", "oldest_age", "redeliveries", "lag", "delivered", "acked"),
    *("overflow", "max_messages", "max_bytes", "dropped"),
}


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{item.get('channel', '')}/{item['name']}": item for item in items}


async def known_traffic(admin: Wire) -> None:
    """orders -> billing, audit; 5 published, billing: 2 delivered, 1 acked."""
    await admin.ok("channel.create", name="orders")
    await admin.ok("subscribe", channel="orders", queue="billing")
    await admin.ok("subscribe", channel="orders", queue="audit")
    await admin.ok("publish", channel="orders", messages=["a", "b", "c"])
    await admin.ok("publish", channel="orders", data="d")
    await admin.ok("publish", channel="orders", data="e")
    pulled = await admin.ok("pull", channel="orders", queue="billing", max=2)
    assert [m["id"] for m in pulled["messages"]] == [1, 2]
    assert (await admin.ok("ack", channel="orders", queue="billing", ids=[1]))["acked"] == 1


@pytest.mark.every_store
async def test_stats_after_known_traffic(
    server: Server, admin: Wire, alice: Wire, store: str
) -> None:
    await known_traffic(admin)
    # Alice waits on a queue of her own: a consumer.
    await admin.ok("channel.create", name="other")
    await alice.ok("subscribe", channel="other")
    await alice.send("pull", channel="other", wait=60)
    await until_pull_waits(server, "other", "alice")
    async with open_wire(server):  # connected, never authenticated
        reply = await admin.ok("stats")
    del reply["ok"]
    assert set(reply) == STATS_KEYS
    assert reply["connections"] == {"open": 3, "authenticated": 2}
    assert reply["totals"] == {"published": 5, "delivered": 2, "acked": 1}
    assert set(reply["rates"]) == {"published", "delivered", "acked", "seconds"}
    assert all(value >= 0 for value in reply["rates"].values())
    assert reply["memory_bytes"] > 0
    assert reply["uptime"] >= 0

    channels = by_name(reply["channels"])
    assert channels["/orders"] == {
        "name": "orders",
        "published": 5,
        "queue_count": 2,
        "depth": 3 + 5,
        "inflight": 1,
    }
    assert channels["/other"]["published"] == 0
    queues = by_name(reply["queues"])
    assert list(queues) == ["orders/audit", "orders/billing", "other/alice"]  # sorted
    assert all(set(queue) == QUEUE_KEYS for queue in queues.values())
    billing = queues["orders/billing"]
    assert (billing["depth"], billing["inflight"], billing["consumers"]) == (3, 1, 0)
    assert (billing["delivered"], billing["acked"]) == (2, 1)
    # Its oldest held message is 2 (1 is acked); the channel's newest is 5.
    assert billing["lag"] == 4
    assert billing["oldest_age"] is not None
    audit = queues["orders/audit"]
    assert (audit["depth"], audit["inflight"], audit["lag"]) == (5, 0, 5)
    assert (audit["delivered"], audit["acked"]) == (0, 0)
    waiting = queues["other/alice"]
    assert (waiting["consumers"], waiting["lag"], waiting["oldest_age"]) == (1, 0, None)

    disk = reply["store"]
    assert disk["name"] == store
    if store in ("memory", "redis"):  # no disk of its own
        assert disk == {
            "name": store,
            "disk_bytes": None,
            "free_bytes": None,
            "full": None,
            "fsync": None,
        }
    else:
        assert disk["disk_bytes"] > 0
        assert disk["free_bytes"] > 0
        assert disk["full"] is None
        fsync = disk["fsync"]
        # fsync=always: every reply above waited for a sync.
        assert fsync["syncs"] >= 1 and fsync["recent"] >= 1
        assert 0 <= fsync["p50"] <= fsync["p99"] <= fsync["max"]


async def test_stats_counts_every_message_of_a_pipelined_run(server: Server, admin: Wire) -> None:
    # Publishes pipelined in one write are published as one run: counted whole.
    await admin.ok("channel.create", name="runs")
    await admin.ok("subscribe", channel="runs", queue="q")
    lines = b"".join(
        orjson.dumps({"op": "publish", "channel": "runs", "data": n}) + b"\n" for n in range(50)
    )
    await admin.send_raw(lines)
    for _ in range(50):
        assert (await admin.recv())["ok"] is True
    pulled = await admin.ok("pull", channel="runs", queue="q", max=30)
    await admin.ok("ack", channel="runs", queue="q", ids=[m["id"] for m in pulled["messages"]])
    await admin.ok("nack", channel="runs", queue="q", ids=[1])  # already acked: unknown
    reply = await admin.ok("stats")
    assert reply["totals"] == {"published": 50, "delivered": 30, "acked": 30}
    assert by_name(reply["queues"])["runs/q"]["depth"] == 20


async def test_stats_is_for_admins(alice: Wire) -> None:
    error = await alice.error("stats", "forbidden")
    assert "admin" in error["message"]


async def test_stats_and_top_on_the_command_line(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        client = await cli.client()
        try:
            await client.channel_create("orders")
            await client.subscribe("orders", "billing")
            await client.publish("orders", {"n": 1})
            await client.publish("orders", {"n": 2})
        finally:
            await client.close()
        out = (await cli.ok("stats")).out
        assert "connections:" in out
        assert "since start: 2 published, 0 delivered, 0 acked" in out
        assert "fsync:" in out
        rows = [line.split() for line in out.splitlines()]
        assert rows[-1][:5] == ["orders", "billing", "2", "0", "0"]
        document = orjson.loads((await cli.ok("stats", "--json")).out)
        assert document["totals"]["published"] == 2

        frames = (await cli.ok("top", "--count", "2", "--interval", "0.1")).out
        assert frames.count("connections:") == 2
        # The second frame has rates per queue, from the counters of both.
        first, second = frames.split("\n\nconnections:")
        assert "DELIVERED" in first and "DELIVER/S" not in first
        assert "DELIVER/S" in second and "ACK/S" in second
        lines = (await cli.ok("top", "--count", "2", "--interval", "0.1", "--json")).out
        assert [orjson.loads(line)["totals"]["published"] for line in lines.splitlines()] == [2, 2]

        forbidden = await cli.fails(6, "stats", env={"TCPMQ_TOKEN": await _user_token(cli.server)})
        assert "forbidden" in forbidden


async def test_top_ends_on_ctrl_c_with_exit_0(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        process = await cli.start("top", "--interval", "60", env=cli.as_admin())
        assert process.stdout is not None
        # The first frame is out: top now waits for its next one.
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert first.startswith(b"connections:")
        process.send_signal(2)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def _user_token(server: Server) -> str:
    async with open_wire(server) as wire:
        await wire.ok("auth", token=server.mint_token("admin"))
        await wire.ok("user.create", name="carol", password="carol-passw0rd")
    return server.mint_token("carol")
