"""Several broker nodes on one Redis (and on a Redis Cluster): one broker to the clients.

Each node is a real `Server` (in this process, or a `tcpmq serve` subprocess
for the SIGKILL test) with its own data dir holding the same token secret,
as an operator sets them up (README, Cluster). Nothing here waits by
sleeping: replies and parked pulls are awaited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    ADMIN_PASSWORD,
    REPLY_TIMEOUT,
    Wire,
    create_user,
    make_config,
    open_user_wire,
    open_wire,
    serving,
    until_pull_waits,
)
from redisserver import RedisServer, redis_server_path, running_cluster, start_redis
from tcpmq.config import ConfigError, ServerConfig
from tcpmq.redisstore import backend as backend_module
from tcpmq.server import Server

pytestmark = pytest.mark.skipif(
    redis_server_path() is None, reason="redis-server is not on PATH: multi-node tests SKIPPED"
)


def node_config(data_dir: Path, store_url: str, **limits: Any) -> ServerConfig:
    return dataclasses.replace(make_config(data_dir, **limits), store=store_url)


@asynccontextmanager
async def nodes(
    tmp_path: Path, store_url: str, count: int, **limits: Any
) -> AsyncIterator[list[Server]]:
    """`count` nodes on one store, sharing the first one's token secret."""
    async with AsyncExitStack() as stack:
        started: list[Server] = []
        for index in range(count):
            data = tmp_path / f"node{index}"
            if started:
                data.mkdir(mode=0o700)
                shutil.copy2(tmp_path / "node0" / "secret", data / "secret")
                os.chmod(data / "secret", 0o600)
            started.append(
                await stack.enter_async_context(serving(node_config(data, store_url, **limits)))
            )
        yield started


def store_url(redis: RedisServer) -> str:
    return redis.url(prefix=f"n{uuid.uuid4().hex[:12]}:")


@pytest.fixture
def shared(redis_server: RedisServer) -> str:
    return store_url(redis_server)


async def test_fan_out_and_competing_consumers_across_nodes(tmp_path: Path, shared: str) -> None:
    async with (
        nodes(tmp_path, shared, 2) as (a, b),
        open_user_wire(a, "admin") as on_a,
        open_user_wire(b, "admin") as on_b,
    ):
        await on_a.ok("channel.create", name="c")
        await on_a.ok("subscribe", channel="c", queue="fan")
        await on_b.ok("subscribe", channel="c", queue="work")
        # Ids come from the store: consecutive, whichever node publishes.
        replies = await asyncio.gather(
            *(node.ok("publish", channel="c", messages=list(range(50))) for node in (on_a, on_b))
        )
        ids = sorted(i for reply in replies for i in reply["message_ids"])
        assert ids == list(range(1, 101))
        assert all(reply["queues"] == 2 for reply in replies)
        # Fan-out: the queue made on A is seen, whole, from B.
        fan = (await on_b.ok("pull", channel="c", queue="fan", max=1000))["messages"]
        assert [m["id"] for m in fan] == ids
        # Competing consumers on both nodes share one queue: each message once.
        got: list[int] = []
        for _ in range(100):
            for node in (on_a, on_b):
                batch = (await node.ok("pull", channel="c", queue="work", max=7))["messages"]
                got.extend(m["id"] for m in batch)
                if batch:
                    await node.ok("ack", channel="c", queue="work", ids=[m["id"] for m in batch])
            if len(got) >= 100:
                break
        assert sorted(got) == ids
        queue = (await on_a.ok("queue.list", channel="c"))["queues"]
        assert {q["name"]: (q["depth"], q["inflight"]) for q in queue} == {
            "fan": (0, 100),
            "work": (0, 0),
        }


async def test_a_pull_waiting_on_one_node_wakes_on_a_publish_through_another(
    tmp_path: Path, shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No safety-net repoll within the test: only the wake can answer the pull.
    monkeypatch.setattr(backend_module, "REPOLL_PERIOD", 3600.0)
    async with (
        nodes(tmp_path, shared, 3) as (a, b, c),
        open_user_wire(a, "admin") as on_a,
        open_user_wire(b, "admin") as on_b,
        open_user_wire(c, "admin") as on_c,
    ):
        await on_a.ok("channel.create", name="c")
        await on_a.ok("subscribe", channel="c")
        await on_b.send("pull", channel="c", wait=30)
        await until_pull_waits(b, "c", "admin")
        await on_c.ok("publish", channel="c", data="hello")
        reply = await asyncio.wait_for(on_b.recv(), REPLY_TIMEOUT)
        assert [m["data"] for m in reply["messages"]] == ["hello"]


async def test_ack_on_one_node_nack_on_another(tmp_path: Path, shared: str) -> None:
    async with (
        nodes(tmp_path, shared, 2) as (a, b),
        open_user_wire(a, "admin") as on_a,
        open_user_wire(b, "admin") as on_b,
    ):
        await on_a.ok("channel.create", name="c")
        await on_a.ok("subscribe", channel="c")
        await on_a.ok("publish", channel="c", messages=["x", "y"])
        pulled = (await on_a.ok("pull", channel="c", max=2))["messages"]
        assert [m["id"] for m in pulled] == [1, 2]
        assert await on_b.ok("nack", channel="c", ids=[1]) == {
            "ok": True,
            "requeued": 1,
            "unknown": [],
        }
        assert (await on_b.ok("ack", channel="c", ids=[2, 3]))["unknown"] == [3]
        again = (await on_b.ok("pull", channel="c"))["messages"]
        assert [(m["id"], m["attempt"]) for m in again] == [(1, 2)]
        assert (await on_a.ok("ack", channel="c", ids=[1]))["acked"] == 1
        [queue] = (await on_b.ok("queue.list", channel="c"))["queues"]
        assert (queue["depth"], queue["inflight"]) == (0, 0)


async def test_an_ack_timeout_redelivers_once_whichever_nodes_look(
    tmp_path: Path, shared: str
) -> None:
    async with (
        nodes(tmp_path, shared, 3) as (a, _b, c),
        open_user_wire(a, "admin") as on_a,
        open_user_wire(c, "admin") as on_c,
    ):
        await on_a.ok("channel.create", name="c")
        await on_a.ok("subscribe", channel="c", ack_timeout=0.2)
        await on_a.ok("publish", channel="c", messages=list(range(20)))
        assert len((await on_a.ok("pull", channel="c", max=20))["messages"]) == 20
        # Every node runs expiry; the script moves each message back once.
        back = (await on_c.ok("pull", channel="c", max=100, wait=30))["messages"]
        got = list(back)
        while len(got) < 20:
            got += (await on_c.ok("pull", channel="c", max=100, wait=30))["messages"]
        assert sorted(m["id"] for m in got) == list(range(1, 21))
        assert {m["attempt"] for m in got} == {2}


async def test_users_and_tokens_are_shared_and_another_secret_is_refused(
    tmp_path: Path, shared: str
) -> None:
    async with nodes(tmp_path, shared, 2) as (a, b):
        async with open_user_wire(a, "admin") as on_a:
            await create_user(on_a, "alice")
        # The directory reaches B through Redis (pub/sub): await it there.
        while b.app.users.find("alice") is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        token = a.mint_token("alice")
        async with open_wire(b) as wire:
            assert (await wire.ok("auth", token=token))["user"] == "alice"
            await wire.error("channel.delete", "not_found", name="none")
        stranger = tmp_path / "stranger"
        with pytest.raises(ValueError, match="secret"):
            async with serving(node_config(stranger, shared)):
                pass


async def test_a_node_killed_mid_load_loses_nothing_acknowledged(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = store_url(redis_server)
    async with nodes(tmp_path, url, 1) as (survivor,), open_user_wire(survivor, "admin") as wire:
        await wire.ok("channel.create", name="c")
        env = {**os.environ, "TCPMQ_ADMIN_PASSWORD": ADMIN_PASSWORD}
        victim_dir = tmp_path / "victim"
        victim_dir.mkdir(mode=0o700)
        shutil.copy2(tmp_path / "node0" / "secret", victim_dir / "secret")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tcpmq", "serve", "--port", "0", "--data-dir", str(victim_dir),
            "--store", url, "--log-level", "info",
            env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            port = await _listening_port(process)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            victim = Wire(reader, writer)
            await victim.recv()  # hello
            await victim.ok("auth", token=survivor.mint_token("admin"))
            await victim.ok("subscribe", channel="c", ack_timeout=0.3)
            # Published and confirmed through the victim; half acked there.
            published = []
            for _ in range(10):
                published += (await victim.ok("publish", channel="c", messages=list(range(10))))[
                    "message_ids"
                ]
            pulled = (await victim.ok("pull", channel="c", max=100))["messages"]
            acked = [m["id"] for m in pulled[:50]]
            await victim.ok("ack", channel="c", ids=acked)
            # More publishes in flight as it dies: those confirmed count, the others may.
            victim.writer.write(b'{"op":"publish","channel":"c","data":"late"}\n' * 50)
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        victim.writer.close()
        # The survivor delivers every confirmed message not acked: the in-flight
        # ones after their ack timeout, with their next attempt; never an acked one.
        seen: dict[int, int] = {}
        while not set(published) - set(acked) <= set(seen):
            batch = (await wire.ok("pull", channel="c", max=100, wait=10))["messages"]
            assert batch, "confirmed messages are missing"
            seen.update((m["id"], m["attempt"]) for m in batch)
        assert not set(acked) & set(seen)
        assert all(seen[i] == 2 for i in published if i not in acked)


async def _listening_port(process: asyncio.subprocess.Process) -> int:
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), REPLY_TIMEOUT)
        assert line, "the node exited before listening"
        if b"tcpmq listening on" in line:
            address = line.split(b"tcpmq listening on ", 1)[1].split()[0]
            return int(address.rsplit(b":", 1)[1])


async def test_redis_restarted_gives_unavailable_then_service_resumes(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    try:
        async with (
            nodes(tmp_path, store_url(redis), 1) as (node,),
            open_user_wire(node, "admin") as wire,
        ):
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c")
            await wire.ok("publish", channel="c", messages=[1, 2, 3])
            assert (await wire.ok("pull", channel="c", max=1))["messages"][0]["id"] == 1
            await wire.ok("ack", channel="c", ids=[1])
            redis.stop()
            error = await wire.error("publish", "unavailable", channel="c", data=4)
            assert "store" in error["message"]
            await wire.error("pull", "unavailable", channel="c")
            redis.start()
            # Nothing acked is back, nothing confirmed is lost (appendfsync always).
            messages = (await wire.ok("pull", channel="c", max=10))["messages"]
            assert [m["id"] for m in messages] == [2, 3]
            assert (await wire.ok("publish", channel="c", data=5))["message_ids"] == [4]
    finally:
        redis.stop()


async def test_two_nodes_on_a_three_master_cluster(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster", 3) as cluster:
        url = cluster.url(prefix=f"n{uuid.uuid4().hex[:8]}:")
        async with (
            nodes(tmp_path, url, 2) as (a, b),
            open_user_wire(a, "admin") as on_a,
            open_user_wire(b, "admin") as on_b,
        ):
            names = [f"ch{i}" for i in range(12)]  # spread over the masters' slots
            for name in names:
                await on_a.ok("channel.create", name=name)
                await on_b.ok("subscribe", channel=name)
                await on_a.ok("publish", channel=name, messages=[name, 2])
            assert [c["name"] for c in (await on_b.ok("channel.list"))["channels"]] == sorted(names)
            for name in names:
                pulled = (await on_b.ok("pull", channel=name, max=10))["messages"]
                assert [m["data"] for m in pulled] == [name, 2]
                assert (await on_a.ok("ack", channel=name, ids=[1, 2]))["acked"] == 2
            # A wake crosses nodes on a cluster too.
            await on_b.send("pull", channel="ch3", wait=30)
            await until_pull_waits(b, "ch3", "admin")
            await on_a.ok("publish", channel="ch3", data="woken")
            reply = await asyncio.wait_for(on_b.recv(), REPLY_TIMEOUT)
            assert [m["data"] for m in reply["messages"]] == ["woken"]


async def test_a_full_redis_refuses_publishes_while_consumers_drain_it(tmp_path: Path) -> None:
    redis = start_redis(
        tmp_path / "redis", "--maxmemory", "4mb", "--maxmemory-policy", "noeviction"
    )
    try:
        async with (
            nodes(tmp_path, store_url(redis), 1) as (node,),
            open_user_wire(node, "admin") as wire,
        ):
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c", ack_timeout=60)
            body = "x" * 4000
            published = 0
            for _ in range(2000):  # 8 MB at most: past the 4 MB
                reply = await wire.call("publish", channel="c", messages=[body] * 10)
                if not reply["ok"]:
                    break
                published += 10
            else:
                pytest.fail("maxmemory never refused a publish")
            assert reply["error"]["code"] == "limit_exceeded"
            assert reply["error"]["limit"] == "max_memory_bytes"
            # Consumers go on: pull, nack, pull again and ack all of it.
            pulled = (await wire.ok("pull", channel="c", max=5))["messages"]
            await wire.ok("nack", channel="c", ids=[m["id"] for m in pulled])
            acked = 0
            while acked < published:
                batch = (await wire.ok("pull", channel="c", max=100))["messages"]
                assert batch
                acked += (await wire.ok("ack", channel="c", ids=[m["id"] for m in batch]))["acked"]
            assert (await wire.ok("publish", channel="c", data="room again"))["queues"] == 1
    finally:
        redis.stop()


async def test_wait_for_a_replica_confirms_writes_or_answers_unavailable(tmp_path: Path) -> None:
    master = start_redis(tmp_path / "master")
    replica = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
    try:
        with replica.client() as client:
            # A bounded look for the replication link: nothing announces it.
            for _ in range(500):
                if client.info("replication").get("master_link_status") == "up":
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the replica never linked")
        url = master.url(prefix="w:") + "&wait=1&wait_timeout=200"
        async with nodes(tmp_path, url, 1) as (node,), open_user_wire(node, "admin") as wire:
            await wire.ok("channel.create", name="c")
            await wire.ok("subscribe", channel="c")
            assert (await wire.ok("publish", channel="c", data=1))["message_ids"] == [1]
            replica.stop()
            error = await wire.error("publish", "unavailable", channel="c", data=2)
            assert "0 of 1 replicas" in error["message"]
            # Reads need no replica.
            assert (await wire.ok("peek", channel="c", max=10))["messages"][0]["id"] == 1
    finally:
        replica.stop()
        master.stop()


async def test_nodes_given_one_secret_file_share_tokens(tmp_path: Path, shared: str) -> None:
    secret = tmp_path / "etc" / "secret"
    secret.parent.mkdir()
    configs = [
        dataclasses.replace(node_config(tmp_path / name, shared), secret_file=secret)
        for name in ("a", "b")
    ]
    async with serving(configs[0]) as a, serving(configs[1]) as b:
        assert secret.stat().st_mode & 0o777 == 0o600  # made by the first node
        assert not (tmp_path / "a" / "secret").exists()
        async with open_wire(b) as wire:
            assert (await wire.ok("auth", token=a.mint_token("admin")))["user"] == "admin"
    with pytest.raises(ConfigError, match="secret_file"):
        ServerConfig(store="log", secret_file=secret)
