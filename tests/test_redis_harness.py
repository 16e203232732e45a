"""The redis test harness itself (tests/redisserver.py): the redis store's tests rely on it."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from conftest import HAVE_REDIS, NO_REDIS
from redisserver import DURABLE, RedisServer, running_cluster, running_redis

pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason=NO_REDIS)


def test_a_durable_server_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", *DURABLE) as server:
        with closing(server.client()) as client:
            client.set("kept", "yes")
        port = server.port
        server.stop()
        assert server.process is not None and server.process.returncode == 0
        server.start()
        assert server.port == port
        with closing(server.client()) as client:
            assert client.get("kept") == b"yes"


def test_a_crash_keeps_what_was_acknowledged_under_appendfsync_always(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", *DURABLE) as server:
        with closing(server.client()) as client:
            for n in range(100):
                client.rpush("list", n)
        server.kill()
        server.start()
        with closing(server.client()) as client:
            assert client.llen("list") == 100


def test_a_default_server_keeps_nothing(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as server:
        with closing(server.client()) as client:
            client.set("gone", "yes")
        server.restart()
        with closing(server.client()) as client:
            assert client.get("gone") is None


def test_the_session_server_answers(redis_server: RedisServer) -> None:
    with closing(redis_server.client()) as client:
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"


@pytest.mark.timeout(120)
def test_a_cluster_of_three_spreads_keys_over_its_masters(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster", 3) as cluster:
        with closing(cluster.nodes[0].client()) as client:
            masters = {
                tuple(slot_range[:2]): slot_range[2][1]
                for slot_range in client.execute_command("CLUSTER", "SLOTS")
            }
            assert len(set(masters.values())) == 3

            def master_of(key: str) -> int:
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                return next(port for (lo, hi), port in masters.items() if lo <= slot <= hi)

            owners = {master_of(f"key{n}") for n in range(30)}
            assert owners == {node.port for node in cluster.nodes}
            # One hash tag, one slot: what lets one script touch all of a user directory's keys.
            assert len({master_of(f"p{{users}}{suffix}") for suffix in ("", ":v", ":x")}) == 1
        assert cluster.url().startswith("redis+cluster://127.0.0.1:")
