"""The limits on what users may make the broker hold: queues per user, memory, users.

Over real sockets on a real server, with small limits so each is reached in
a few requests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import USER_PASSWORD, create_user, open_user_wire, running_server

pytestmark = pytest.mark.every_store


async def test_max_queues_per_user_counts_across_channels(tmp_path: Path, store: str) -> None:
    data = tmp_path / "data"
    async with (
        running_server(data, max_queues_per_user=2) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await create_user(admin, "alice")
        for channel in ("a", "b", "c"):
            await admin.ok("channel.create", name=channel)
        async with open_user_wire(srv, "alice") as alice:
            await alice.ok("subscribe", channel="a")
            await alice.ok("subscribe", channel="b")
            error = await alice.error("subscribe", "limit_exceeded", channel="c")
            assert (error["limit"], error["max"]) == ("max_queues_per_user", 2)
            # Subscribing again to one's own queue creates none.
            assert (await alice.ok("subscribe", channel="a"))["created"] is False
            # Another user's queues are theirs to count.
            await admin.ok("subscribe", channel="c")
            await alice.ok("queue.delete", channel="b", queue="alice")
            await alice.ok("subscribe", channel="c")
    if store == "memory":
        return
    # The count is rebuilt at start, not kept anywhere.
    async with (
        running_server(data, max_queues_per_user=2) as srv,
        open_user_wire(srv, "alice") as alice,
    ):
        error = await alice.error("subscribe", "limit_exceeded", channel="b")
        assert error["limit"] == "max_queues_per_user"


@pytest.mark.local_store("the redis store leaves memory to Redis's maxmemory")
async def test_max_memory_bytes_counts_a_fanned_out_message_once(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_memory_bytes=100_000) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await admin.ok("channel.create", name="c")
        for n in range(10):
            await admin.ok("subscribe", channel="c", queue=f"q{n}")
        # 60 KB to ten queues: 600 KB if each queue had its copy.
        big = "x" * 60_000
        assert (await admin.ok("publish", channel="c", data=big))["queues"] == 10
        error = await admin.error("publish", "limit_exceeded", channel="c", data=big)
        assert (error["limit"], error["max"]) == ("max_memory_bytes", 100_000)
        # Acked by every queue, the message takes nothing any more.
        for n in range(10):
            [message] = (await admin.ok("pull", channel="c", queue=f"q{n}"))["messages"]
            await admin.ok("ack", channel="c", queue=f"q{n}", ids=[message["id"]])
        await admin.ok("publish", channel="c", data=big)


async def test_max_users_counts_every_user(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_users=3) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await create_user(admin, "alice")
        await create_user(admin, "bob")
        error = await admin.error(
            "user.create", "limit_exceeded", name="carol", password=USER_PASSWORD, role="user"
        )
        assert (error["limit"], error["max"]) == ("max_users", 3)
        await admin.ok("user.delete", name="bob")
        await create_user(admin, "carol")


@pytest.mark.local_store("it reads the broker's memory estimate in the process")
async def test_a_fanned_out_body_stays_one_object_after_a_restart(
    tmp_path: Path, store: str
) -> None:
    if store == "memory":
        pytest.skip("nothing to restart from")
    data = tmp_path / "data"
    async with running_server(data) as srv, open_user_wire(srv, "admin") as admin:
        await admin.ok("channel.create", name="c")
        for n in range(3):
            await admin.ok("subscribe", channel="c", queue=f"q{n}")
        await admin.ok("publish", channel="c", data="in the snapshot")
        await srv.store.compact()
        await admin.ok("publish", channel="c", data="in the log")
    async with running_server(data) as srv:
        queues = list(srv.backend.broker.channels["c"].queues.values())  # type: ignore[attr-defined]
        for index in range(2):
            head = queues[0].fresh[index]
            assert all(queue.fresh[index] is head for queue in queues)
