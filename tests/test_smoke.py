"""The shortest path through the broker: hello, login, publish, pull, ack."""

from __future__ import annotations

from conftest import ADMIN_PASSWORD, Wire


async def test_login_publish_pull_ack(wire: Wire) -> None:
    assert wire.hello["server"] == "tcpmq"
    reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD, id="l1")
    assert reply["id"] == "l1" and reply["role"] == "admin" and reply["token"]
    await wire.ok("channel.create", name="orders")
    await wire.ok("subscribe", channel="orders", queue="billing")
    published = await wire.ok("publish", channel="orders", data={"n": 1})
    assert published["message_ids"] == [1] and published["queues"] == 1
    pulled = await wire.ok("pull", channel="orders", queue="billing", max=10)
    [message] = pulled["messages"]
    assert message["data"] == {"n": 1} and message["attempt"] == 1
    assert message["publisher"] == "admin"
    acked = await wire.ok("ack", channel="orders", queue="billing", ids=[1])
    assert acked == {"ok": True, "acked": 1, "unknown": []}
