"""The user directory on Redis (redisstore/users.py), against a real redis-server.

Several directories on one Redis stand for several broker nodes: each has its
own connections, as separate processes would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

from conftest import HAVE_REDIS, NO_REDIS, REPLY_TIMEOUT
from redisserver import RedisServer, running_cluster, running_redis
from tcpmq.errors import AlreadyExists, Forbidden, LimitExceeded, NotFound, Unavailable
from tcpmq.redisstore.users import RedisUserDirectory, secret_check

pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason=NO_REDIS)

SECRET = b"s" * 32
NOW = 1_700_000_000.123456  # 16 digits: more than Lua's cjson keeps


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex}:"


@asynccontextmanager
async def opened(
    server: RedisServer,
    prefix: str,
    *,
    secret: bytes = SECRET,
    max_users: int = 100,
    retry: Retry | None = None,
) -> AsyncIterator[RedisUserDirectory]:
    """A directory on its own client, closed (both) when the block ends."""
    options = {} if retry is None else {"retry": retry}
    client = Redis(host="127.0.0.1", port=server.port, socket_timeout=REPLY_TIMEOUT, **options)
    try:
        directory = await RedisUserDirectory.open(client, prefix, secret, max_users)
        try:
            yield directory
        finally:
            await directory.close()
    finally:
        await client.aclose()


async def caught_up(directory: RedisUserDirectory, version: int) -> None:
    """Wait (bounded) until `directory` reflects `version`."""
    async with asyncio.timeout(REPLY_TIMEOUT):
        await directory.until_version(version)


async def test_create_read_and_change_users(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix, max_users=3) as users:
        assert users.empty
        assert users.secret == SECRET
        admin = await users.create("admin", "admin", "hash-a", NOW)
        alice = await users.create("alice", "user", "hash-1", NOW + 1)
        assert not users.empty
        assert users.get("alice") == alice
        assert users.find("bob") is None
        assert [u.name for u in users.list()] == ["admin", "alice"]
        assert alice.created_at == NOW + 1 and alice.tokens_valid_after == 0
        assert alice.uid != admin.uid

        with pytest.raises(AlreadyExists):
            await users.create("alice", "user", "hash-2", NOW)
        await users.create("bob", "user", "hash-b", NOW)
        with pytest.raises(LimitExceeded) as full:
            await users.create("carol", "user", "hash-c", NOW)
        assert full.value.details == {"limit": "max_users", "max": 3}

        changed = await users.set_password("alice", "hash-new", 100)
        assert (changed.password_hash, changed.tokens_valid_after) == ("hash-new", 100)
        # Never moved back: always past the last revocation.
        assert (await users.revoke_tokens("alice", 50)).tokens_valid_after == 101
        alice = await users.revoke_tokens("alice", 200)
        assert alice.tokens_valid_after == 200
        assert users.get("alice") == alice
        assert alice.created_at == NOW + 1  # kept to the last digit

        with pytest.raises(Forbidden):
            await users.delete("admin")
        assert (await users.delete("bob")).name == "bob"
        assert users.find("bob") is None
        with pytest.raises(NotFound):
            users.get("bob")
        with pytest.raises(NotFound):
            await users.delete("bob")
        with pytest.raises(NotFound):
            await users.revoke_tokens("bob", 1)
        with pytest.raises(NotFound):
            await users.set_password("bob", "h", 1)

    # Everything is in Redis: a node started later finds it.
    async with opened(redis_server, prefix) as again:
        assert again.list() == [admin, alice]


async def test_each_node_sees_the_others_changes(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as one, opened(redis_server, prefix) as two:
        await one.create("admin", "admin", "hash-a", NOW)
        alice = await one.create("alice", "user", "hash-1", NOW)
        await caught_up(two, one.version)
        assert two.get("alice") == alice

        revoked = await two.revoke_tokens("alice", 10)
        await caught_up(one, two.version)
        assert one.get("alice") == revoked

        await two.delete("alice")
        await caught_up(one, two.version)
        assert one.find("alice") is None
        assert one.version == two.version


async def test_a_change_applies_to_the_stored_record_not_a_stale_copy(
    redis_server: RedisServer, prefix: str
) -> None:
    async with opened(redis_server, prefix) as users:
        await users.create("alice", "user", "hash-1", NOW)
        # Changed behind the directory's back (no announcement): its copy is stale.
        with redis_server.client() as raw:
            record = orjson.loads(raw.hget(f"{prefix}{{users}}", "alice"))
            stale = orjson.dumps({**record, "tokens_valid_after": 500})
            raw.hset(f"{prefix}{{users}}", "alice", stale)
        assert users.get("alice").tokens_valid_after == 0
        assert (await users.revoke_tokens("alice", 10)).tokens_valid_after == 501
        assert users.get("alice").tokens_valid_after == 501


async def test_concurrent_creates_never_exceed_max_users(
    redis_server: RedisServer, prefix: str
) -> None:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(opened(redis_server, prefix, max_users=5))
            for _ in range(3)
        ]
        results = await asyncio.gather(
            *(nodes[n % 3].create(f"user{n}", "user", "h", NOW) for n in range(30)),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(created) == 5
        assert all(isinstance(r, LimitExceeded) for r in refused), refused
        with redis_server.client() as raw:
            assert raw.hlen(f"{prefix}{{users}}") == 5
        for node in nodes:
            await caught_up(node, 5)
            assert {u.name for u in node.list()} == {u.name for u in created}


async def test_concurrent_deletes_never_remove_the_last_admin(
    redis_server: RedisServer, prefix: str
) -> None:
    async with opened(redis_server, prefix) as one, opened(redis_server, prefix) as two:
        for name in ("root", "boss"):
            await one.create(name, "admin", "h", NOW)
        await caught_up(two, one.version)
        results = await asyncio.gather(
            one.delete("root"), two.delete("boss"), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["Forbidden", "User"]
        await caught_up(one, 3)
        await caught_up(two, 3)
        assert len(one.list()) == len(two.list()) == 1
        assert one.list()[0].role == "admin"


async def test_another_secret_is_refused(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as users:
        await users.create("admin", "admin", "h", NOW)
    with redis_server.client() as raw:
        stored = raw.hget(f"{prefix}{{meta}}", "secret_check")
        assert stored == secret_check(SECRET).encode()
        assert SECRET not in b"".join(raw.hvals(f"{prefix}{{meta}}"))
    with pytest.raises(ValueError, match="another secret"):
        async with opened(redis_server, prefix, secret=b"x" * 32):
            pass
    async with opened(redis_server, prefix) as same:
        assert same.get("admin").role == "admin"


async def test_a_resubscription_reloads_what_was_missed(
    redis_server: RedisServer, prefix: str
) -> None:
    async with opened(redis_server, prefix) as users:
        await users.create("alice", "user", "h", NOW)
        # A change whose announcement is lost: written without PUBLISH, then the
        # subscriber's connection is cut; its new subscription must reload.
        with redis_server.client() as raw:
            record = orjson.loads(raw.hget(f"{prefix}{{users}}", "alice"))
            raw.hset(f"{prefix}{{users}}", "bob", orjson.dumps({**record, "name": "bob"}))
            version = raw.incr(f"{prefix}{{users}}:v")
            assert raw.client_kill_filter(_type="pubsub") >= 1
        await caught_up(users, int(version))
        assert users.get("bob").uid == record["uid"]


async def test_an_unreachable_store_is_unavailable_then_recovers(tmp_path: Path) -> None:
    # One quick retry: redis-py's default retries for seconds before giving up.
    retry = Retry(ConstantBackoff(0.01), 1)
    with running_redis(tmp_path / "redis") as server:
        async with opened(server, "p:", retry=retry) as users:
            await users.create("admin", "admin", "h", NOW)
            server.stop()
            with pytest.raises(Unavailable, match="cannot be reached"):
                await users.create("alice", "user", "h", NOW)
            assert users.get("admin").role == "admin"  # reads still answer from the copy
            server.start()
            # The store came back empty (no persistence): the directory follows it.
            alice = await users.create("alice", "user", "h", NOW)
            assert users.list() == [alice]
        server.stop()
        with pytest.raises(Unavailable):
            async with opened(server, "p:", retry=retry):
                pass


@pytest.mark.timeout(120)
async def test_nodes_on_a_cluster_see_each_others_changes(tmp_path: Path) -> None:
    # Each node asks another master first; the announcement crosses the cluster bus.
    with running_cluster(tmp_path / "cluster", 3) as cluster:
        clients = [RedisCluster(host="127.0.0.1", port=node.port) for node in cluster.nodes[:2]]
        try:
            one, two = [
                await RedisUserDirectory.open(client, "p:", SECRET, 10) for client in clients
            ]
            await one.create("admin", "admin", "h", NOW)
            alice = await one.create("alice", "user", "h", NOW)
            await caught_up(two, one.version)
            assert two.get("alice") == alice
            revoked = await two.revoke_tokens("alice", 10)
            await caught_up(one, two.version)
            assert one.get("alice") == revoked
            with pytest.raises(Forbidden):
                await two.delete("admin")
            for directory in (one, two):
                await directory.close()
        finally:
            for client in clients:
                await client.aclose()
