"""Channel permissions: private and public channels, grants, reserved queue names.

The harness starts servers whose channels are public by default (most tests
have users share channels); every test here asks for private ones, or for
the server's own default, explicitly. Protocol behaviour goes over raw
sockets, the rest through the client library and the command line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import orjson
import pytest

from cli_helpers import Cli
from conftest import (
    ADMIN_PASSWORD_HASH,
    Wire,
    create_user,
    open_user_wire,
    running_server,
    until_pull_waits,
)
from tcpmq.cli.commands import build_parser
from tcpmq.cli.local import server_config
from tcpmq.client import connect
from tcpmq.config import ServerConfig
from tcpmq.errors import Forbidden
from tcpmq.server import Server
from tcpmq.storage.log import segment_path
from tcpmq.storage.records import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    Kind,
    RecordType,
    encode_json,
    header,
)
from tcpmq.storage.recovery import list_files
from tcpmq.storage.store import STORE_DIR


@asynccontextmanager
async def private_server(data_dir: Path, **limits: object) -> AsyncIterator[Server]:
    async with running_server(data_dir, default_channel_access="private", **limits) as srv:
        yield srv


@asynccontextmanager
async def users(server: Server, *names: str) -> AsyncIterator[list[Wire]]:
    """Raw connections as `admin` and as each of `names` (created first)."""
    async with AsyncExitStack() as stack:
        admin = await stack.enter_async_context(open_user_wire(server, "admin"))
        for name in names:
            await create_user(admin, name)
        wires = [admin]
        for name in names:
            wires.append(await stack.enter_async_context(open_user_wire(server, name)))
        yield wires


def forbidden(error: dict[str, object], *words: str) -> None:
    message = str(error["message"])
    for word in words:
        assert word in message, message


# --- the server's default ------------------------------------------------------


async def test_a_server_with_the_default_config_makes_private_channels(tmp_path: Path) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data")
    server = Server(config, admin_password_hash=ADMIN_PASSWORD_HASH)
    await server.start()
    try:
        async with users(server, "alice", "bob") as (_, alice, bob):
            assert (await bob.ok("server.info"))["default_channel_access"] == "private"
            created = await alice.ok("channel.create", name="orders")
            assert created["channel"]["access"] == "private"
            forbidden(await bob.error("subscribe", "forbidden", channel="orders"), "subscribe")
            forbidden(await bob.error("publish", "forbidden", channel="orders", data=1), "publish")
    finally:
        await server.stop()


def test_tcpmq_serve_defaults_to_private_channels() -> None:
    args = build_parser().parse_args(["serve"])
    assert server_config(args).default_channel_access == "private"
    args = build_parser().parse_args(["serve", "--default-channel-access", "public"])
    assert server_config(args).default_channel_access == "public"


# --- a private channel -----------------------------------------------------------


async def test_another_user_can_neither_read_nor_publish_a_private_channel(tmp_path: Path) -> None:
    async with private_server(tmp_path / "data") as server, users(server, "alice", "bob") as wires:
        _, alice, bob = wires
        await alice.ok("channel.create", name="orders")
        await alice.ok("subscribe", channel="orders")
        error = await bob.error("subscribe", "forbidden", channel="orders", queue="bob.copy")
        forbidden(error, "'orders'", "private", "subscribe right", "channel.grant", "alice")
        error = await bob.error("publish", "forbidden", channel="orders", data="forged")
        forbidden(error, "'orders'", "private", "publish right", "channel.grant", "alice")
        # A pipelined run of publishes: each is refused, none lands.
        await bob.send_raw(
            b"".join(
                orjson.dumps({"op": "publish", "id": i, "channel": "orders", "data": i}) + b"\n"
                for i in range(3)
            )
        )
        replies = [await bob.recv() for _ in range(3)]
        assert [(r["id"], r["error"]["code"]) for r in replies] == [
            (0, "forbidden"),
            (1, "forbidden"),
            (2, "forbidden"),
        ]
        assert (await alice.ok("pull", channel="orders"))["messages"] == []
        # The owner and admins may do everything.
        await alice.ok("publish", channel="orders", data="mine")
        await wires[0].ok("publish", channel="orders", data="admin's")
        await wires[0].ok("subscribe", channel="orders", queue="ops")
        messages = (await alice.ok("pull", channel="orders", max=10))["messages"]
        assert [m["data"] for m in messages] == ["mine", "admin's"]


async def test_grant_then_revoke(tmp_path: Path) -> None:
    async with private_server(tmp_path / "data") as server, users(server, "alice", "bob") as wires:
        _, alice, bob = wires
        await alice.ok("channel.create", name="orders")
        reply = await alice.ok("channel.grant", name="orders", user="bob", rights=["subscribe"])
        assert reply["rights"] == ["subscribe"]
        await bob.ok("subscribe", channel="orders")
        await bob.error("publish", "forbidden", channel="orders", data=0)
        assert (await alice.ok("channel.grant", name="orders", user="bob"))["rights"] == [
            "publish",
            "subscribe",
        ]
        channel = (await bob.ok("channel.get", name="orders"))["channel"]
        assert channel["grants"] == {"bob": ["publish", "subscribe"]}
        await bob.ok("publish", channel="orders", data="from bob")
        assert [m["data"] for m in (await bob.ok("pull", channel="orders"))["messages"]] == [
            "from bob"
        ]

        # Revoking subscribe deletes bob's queue; a pull waiting on it ends.
        await bob.send("pull", id="waiting", channel="orders", wait=30)
        await until_pull_waits(server, "orders", "bob")
        reply = await alice.ok("channel.revoke", name="orders", user="bob", rights=["subscribe"])
        assert (reply["rights"], reply["queues_deleted"]) == (["publish"], 1)
        assert (await bob.recv())["error"]["code"] == "not_found"
        assert (await alice.ok("queue.list", channel="orders"))["queues"] == []
        await bob.error("subscribe", "forbidden", channel="orders")
        await bob.ok("publish", channel="orders", data="still may")

        reply = await alice.ok("channel.revoke", name="orders", user="bob")
        assert (reply["rights"], reply["queues_deleted"]) == ([], 0)
        await bob.error("publish", "forbidden", channel="orders", data="no more")
        assert (await alice.ok("channel.get", name="orders"))["channel"]["grants"] == {}


async def test_a_public_channel_lets_anyone(tmp_path: Path) -> None:
    async with private_server(tmp_path / "data") as server, users(server, "alice", "bob") as wires:
        _, alice, bob = wires
        created = await alice.ok("channel.create", name="news", access="public")
        assert created["channel"]["access"] == "public"
        await bob.ok("subscribe", channel="news")
        await bob.ok("publish", channel="news", data="hi")
        assert (await bob.ok("pull", channel="news"))["messages"][0]["data"] == "hi"
        listed = (await bob.ok("channel.list"))["channels"]
        assert [(c["name"], c["access"]) for c in listed] == [("news", "public")]
        # Revoking on a public channel takes no queue: the user may still read it.
        reply = await alice.ok("channel.revoke", name="news", user="bob")
        assert reply["queues_deleted"] == 0


async def test_making_a_channel_private_grants_its_subscribers(tmp_path: Path) -> None:
    async with (
        private_server(tmp_path / "data") as server,
        users(server, "alice", "bob", "carol") as (admin, alice, bob, carol),
    ):
        await alice.ok("channel.create", name="news", access="public")
        await bob.ok("subscribe", channel="news")
        await carol.ok("subscribe", channel="news", queue="carol.audit")
        await alice.ok("subscribe", channel="news")
        reply = await alice.ok("channel.update", name="news", access="private")
        assert reply == {"ok": True, "access": "private", "granted": ["bob", "carol"]}
        channel = (await bob.ok("channel.get", name="news"))["channel"]
        assert channel["access"] == "private"
        assert channel["grants"] == {"bob": ["subscribe"], "carol": ["subscribe"]}
        await alice.ok("publish", channel="news", data="still reaches you")
        assert (await carol.ok("pull", channel="news", queue="carol.audit"))["messages"]
        await bob.ok("subscribe", channel="news", queue="bob.second")
        await bob.error("publish", "forbidden", channel="news", data="no")
        # Public again: grants stay, and nothing is granted twice.
        assert (await admin.ok("channel.update", name="news", access="public"))["granted"] == []
        assert (await alice.ok("channel.update", name="news", access="private"))["granted"] == []


async def test_only_the_owner_or_an_admin_manages_rights(tmp_path: Path) -> None:
    async with (
        private_server(tmp_path / "data") as server,
        users(server, "alice", "bob") as (admin, alice, bob),
    ):
        await alice.ok("channel.create", name="orders")
        for op, fields in (
            ("channel.grant", {"user": "bob"}),
            ("channel.revoke", {"user": "alice"}),
            ("channel.update", {"access": "public"}),
        ):
            error = await bob.error(op, "forbidden", name="orders", **fields)
            forbidden(error, "only the owner of channel 'orders' (alice) or an admin")
        await admin.ok("channel.grant", name="orders", user="bob", rights=["publish"])
        await bob.ok("publish", channel="orders", data=1)
        # A grant does not make bob a manager.
        await bob.error("channel.grant", "forbidden", name="orders", user="bob")


async def test_granting_needs_an_existing_user_and_channel(tmp_path: Path) -> None:
    async with private_server(tmp_path / "data") as server, users(server, "alice") as wires:
        _, alice = wires
        await alice.ok("channel.create", name="orders")
        error = await alice.error("channel.grant", "not_found", name="orders", user="nobody")
        forbidden(error, "nobody")
        await alice.error("channel.grant", "not_found", name="nope", user="alice")
        await alice.error("channel.update", "not_found", name="nope", access="public")
        # Revoking from a name that is no user takes nothing, and is no error.
        reply = await alice.ok("channel.revoke", name="orders", user="nobody")
        assert (reply["rights"], reply["queues_deleted"]) == ([], 0)


@pytest.mark.parametrize(
    ("op", "fields", "field"),
    [
        ("channel.grant", {"user": "bob", "rights": ["read"]}, "rights.0"),
        ("channel.grant", {"user": "bob", "rights": ["publish", "admin"]}, "rights.1"),
        ("channel.grant", {"user": "bob", "rights": []}, "rights"),
        ("channel.grant", {"user": "bob", "rights": "publish"}, "rights"),
        ("channel.revoke", {"user": "bob", "rights": ["all"]}, "rights.0"),
        ("channel.update", {"access": "secret"}, "access"),
        ("channel.update", {}, "access"),
        ("channel.create", {"access": "open"}, "access"),
    ],
)
async def test_bad_rights_and_access_name_the_field(
    tmp_path: Path, op: str, fields: dict[str, object], field: str
) -> None:
    async with private_server(tmp_path / "data") as server, users(server, "alice") as wires:
        _, alice = wires
        await alice.ok("channel.create", name="orders")
        error = await alice.error(op, "bad_request", name="orders", **fields)
        assert error["field"] == field


# --- reserved queue names ---------------------------------------------------------


async def test_a_queue_named_after_another_user_is_refused(tmp_path: Path) -> None:
    async with (
        private_server(tmp_path / "data") as server,
        users(server, "alice", "bob") as (admin, alice, bob),
    ):
        await alice.ok("channel.create", name="news", access="public")
        for name in ("alice", "alice.x", "alice.x.y"):
            error = await bob.error("subscribe", "forbidden", channel="news", queue=name)
            forbidden(error, f"{name!r}", "reserved for user 'alice'", "bob.<something>")
        await bob.ok("subscribe", channel="news", queue="bob.x")
        await bob.ok("subscribe", channel="news", queue="alicex")
        await alice.ok("subscribe", channel="news", queue="alice.x")
        await admin.ok("subscribe", channel="news", queue="alice.ops")
        # The default subscribe takes the user's own name, which nobody could squat.
        assert (await alice.ok("subscribe", channel="news"))["created"] is True


async def test_a_queue_made_before_its_user_existed_says_whose_it_is(tmp_path: Path) -> None:
    async with (
        private_server(tmp_path / "data") as server,
        users(server, "alice", "bob") as (admin, alice, bob),
    ):
        await alice.ok("channel.create", name="news", access="public")
        await bob.ok("subscribe", channel="news", queue="carol")
        await create_user(admin, "carol")
        async with open_user_wire(server, "carol") as carol:
            error = await carol.error("subscribe", "forbidden", channel="news")
            forbidden(error, "'carol'", "belongs to 'bob'", "queue.delete", "alice")
            await alice.ok("queue.delete", channel="news", queue="carol")
            assert (await carol.ok("subscribe", channel="news"))["created"] is True


# --- identity --------------------------------------------------------------------


async def test_a_user_created_again_inherits_no_grants(tmp_path: Path) -> None:
    async with private_server(tmp_path / "data") as server:
        async with users(server, "alice", "bob") as (admin, alice, bob):
            await alice.ok("channel.create", name="orders")
            await alice.ok("channel.grant", name="orders", user="bob")
            await bob.ok("publish", channel="orders", data="ok")
            await admin.ok("user.delete", name="bob")
            assert (await admin.ok("channel.get", name="orders"))["channel"]["grants"] == {}
            await create_user(admin, "bob")
        async with open_user_wire(server, "bob") as bob:
            await bob.error("publish", "forbidden", channel="orders", data="not again")
            await bob.error("subscribe", "forbidden", channel="orders")


# --- storage -----------------------------------------------------------------------


async def test_permissions_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with private_server(data) as server, users(server, "alice", "bob", "carol") as wires:
        _, alice, bob, _ = wires
        await alice.ok("channel.create", name="orders")
        await alice.ok("channel.create", name="news", access="public")
        await bob.ok("subscribe", channel="news")
        await alice.ok("channel.update", name="news", access="private")
        await alice.ok("channel.grant", name="orders", user="bob", rights=["publish"])
        await alice.ok("channel.grant", name="orders", user="carol")
        await alice.ok("channel.revoke", name="orders", user="carol", rights=["publish"])
    async with (
        private_server(data) as server,
        open_user_wire(server, "bob") as bob,
        open_user_wire(server, "carol") as carol,
    ):
        orders = (await bob.ok("channel.get", name="orders"))["channel"]
        assert orders["access"] == "private"
        assert orders["grants"] == {"bob": ["publish"], "carol": ["subscribe"]}
        news = (await bob.ok("channel.get", name="news"))["channel"]
        assert (news["access"], news["grants"]) == ("private", {"bob": ["subscribe"]})
        await bob.ok("publish", channel="orders", data=1)
        await bob.error("subscribe", "forbidden", channel="orders")
        await carol.ok("subscribe", channel="orders")
        await carol.error("publish", "forbidden", channel="orders", data=2)
        await carol.error("subscribe", "forbidden", channel="news")


def write_version_2_store(data_dir: Path) -> Path:
    """A store as a version-2 build left it: one segment, one channel record
    without `access` or `grants`. Returns the segment."""
    store = data_dir / STORE_DIR
    store.mkdir(parents=True, mode=0o700)
    data_dir.chmod(0o700)
    record = {
        "uid": 1,
        "name": "legacy",
        "owner": "admin",
        "created_at": 1764355300.0,
        "next_id": 1,
        "published": 0,
    }
    segment = segment_path(store, 1)
    segment.write_bytes(
        HEADER.pack(MAGIC, Kind.LOG.value, 2, 1) + encode_json(RecordType.CHANNEL, record)
    )
    segment.chmod(0o600)
    return segment


async def test_an_older_store_keeps_its_segment_and_its_channels_public(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_segment = write_version_2_store(data)
    old_bytes = old_segment.read_bytes()
    async with private_server(data) as server, users(server, "bob") as (admin, bob):
        channel = (await bob.ok("channel.get", name="legacy"))["channel"]
        assert (channel["access"], channel["grants"]) == ("public", {})
        await bob.ok("subscribe", channel="legacy")
        await bob.ok("publish", channel="legacy", data="as before")
        await admin.ok("channel.create", name="new")
    # The version-2 segment got nothing; the records went to a new version-3 one.
    assert old_segment.read_bytes() == old_bytes
    segments = list_files(data / STORE_DIR).segments
    assert sorted(segments) == [1, 2]
    new = segments[2].read_bytes()
    assert new[: HEADER.size] == header(Kind.LOG, 2)
    assert HEADER.unpack_from(new)[2] == FORMAT_VERSION == 3
    assert len(new) > HEADER.size
    async with private_server(data) as server, users(server) as (admin,):
        names = [c["name"] for c in (await admin.ok("channel.list"))["channels"]]
        assert names == ["legacy", "new"]
        messages = (await admin.ok("pull", channel="legacy", queue="bob"))["messages"]
        assert [m["data"] for m in messages] == ["as before"]
    # Reopened on a current segment, the broker appends to it.
    assert sorted(list_files(data / STORE_DIR).segments) == [1, 2]


async def test_a_version_2_header_written_by_this_build_starts_a_new_segment(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with private_server(data) as server, users(server) as (admin,):
        await admin.ok("channel.create", name="orders")
    store = data / STORE_DIR
    (last,) = list_files(store).segments.values()
    data_bytes = bytearray(last.read_bytes())
    data_bytes[6:8] = (2).to_bytes(2, "little")  # after magic (5) and kind (1): the version
    last.write_bytes(bytes(data_bytes))
    size = last.stat().st_size
    async with private_server(data) as server, users(server) as (admin,):
        await admin.ok("channel.grant", name="orders", user="admin")
    assert last.stat().st_size == size
    segments = list_files(store).segments
    newest = segments[max(segments)]
    assert newest != last and HEADER.unpack_from(newest.read_bytes())[2] == 3
    assert newest.stat().st_size > HEADER.size


# --- the client library and the command line ------------------------------------------


async def test_the_client_library_manages_rights(tmp_path: Path) -> None:
    async with private_server(tmp_path / "data") as server:
        url = f"tcpmq://{server.host}:{server.port}"
        async with connect(url, token=server.mint_token("admin")) as admin:
            await admin.user_create("bob", "bob-passw0rd")
            created = await admin.channel_create("orders")
            assert created.access == "private"
            assert (await admin.channel_create("news", "public")).access == "public"
            async with connect(url, token=server.mint_token("bob")) as bob:
                with pytest.raises(Forbidden):
                    await bob.publish("orders", 1)
                assert await admin.channel_grant("orders", "bob", ["publish"]) == ["publish"]
                assert (await bob.publish("orders", 1)).queues == 0
                assert await admin.channel_grant("orders", "bob") == ["publish", "subscribe"]
                await bob.subscribe("orders")
                revoked = await admin.channel_revoke("orders", "bob", ["subscribe"])
                assert (revoked.rights, revoked.queues_deleted) == (["publish"], 1)
                info = await bob.channel_get("orders")
                assert (info.access, info.grants) == ("private", {"bob": ["publish"]})
                await bob.subscribe("news")
                updated = await admin.channel_update("news", access="private")
                assert (updated.access, updated.granted) == ("private", ["bob"])
                assert (await bob.info()).default_channel_access == "private"


async def test_the_command_line_manages_rights(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    async with private_server(tmp_path / "data") as server:
        cli = Cli(server, home)
        client = await cli.client()
        try:
            await client.user_create("bob", "bob-passw0rd")
        finally:
            await client.close()
        bob = {"TCPMQ_TOKEN": server.mint_token("bob")}
        await cli.ok("channel", "create", "orders", "--private")
        await cli.ok("channel", "add", "news", "--public")
        listed = await cli.ok("channel", "list")
        assert [line.split()[:5] for line in listed.lines[1:]] == [
            ["news", "admin", "0", "0", "public"],
            ["orders", "admin", "0", "0", "private"],
        ]
        line = await cli.fails(6, "pub", "orders", "1", env=bob)
        assert "publish right" in line
        result = await cli.ok("channel", "grant", "orders", "bob", "--publish")
        assert result.out == "bob now has publish on channel 'orders'\n"
        published = await cli.run("pub", "orders", "1", env=bob)
        assert (published.code, published.out) == (
            0,
            "published message 1 to 'orders' (0 queues)\n",
        )
        result = await cli.ok("channel", "grant", "orders", "bob")
        assert result.out == "bob now has publish and subscribe on channel 'orders'\n"
        await cli.ok("sub", "orders", env=bob)
        got = await cli.ok("channel", "get", "orders")
        assert "access:    private" in got.out and "grants:    bob (publish, subscribe)" in got.out
        result = await cli.ok("channel", "revoke", "orders", "bob", "--subscribe")
        assert result.out == (
            "bob now has publish on channel 'orders'; deleted its 1 queue there\n"
        )
        result = await cli.ok("channel", "revoke", "orders", "bob", "--json")
        assert orjson.loads(result.out) == {"rights": [], "queues_deleted": 0}
        await cli.ok("sub", "news", env=bob)
        result = await cli.ok("channel", "access", "news", "private")
        assert result.out == (
            "channel 'news' is private; granted subscribe to bob (they have queues on it)\n"
        )
        line = await cli.fails(6, "channel", "grant", "news", "bob", env=bob)
        assert "only the owner of channel 'news' (admin) or an admin" in line
        await cli.fails(2, "channel", "access", "news", "open")
        await cli.fails(2, "channel", "create", "x", "--public", "--private")

        # The shell runs the same commands.
        shell = await cli.run(
            "shell",
            env=cli.as_admin(),
            stdin=b"channel access news public\nchannel grant news bob --subscribe\n"
            b"channel revoke news bob\n",
        )
        assert shell.code == 0, shell
        assert shell.lines == [
            "channel 'news' is public",
            "bob now has subscribe on channel 'news'",
            "bob now has no rights on channel 'news'",
        ]


async def test_pipelined_publishes_of_a_forbidden_run_all_fail_fast(tmp_path: Path) -> None:
    # A run mixing a forbidden channel with a permitted one: each keeps its own answer.
    async with private_server(tmp_path / "data") as server, users(server, "alice", "bob") as wires:
        _, alice, bob = wires
        await alice.ok("channel.create", name="orders")
        await alice.ok("channel.create", name="news", access="public")
        lines = [
            {"op": "publish", "id": 1, "channel": "news", "data": 1},
            {"op": "publish", "id": 2, "channel": "orders", "messages": [1, 2]},
            {"op": "publish", "id": 3, "channel": "orders", "data": 3},
            {"op": "publish", "id": 4, "channel": "news", "data": 4},
        ]
        await bob.send_raw(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        replies = [await bob.recv() for _ in lines]
        assert [r["ok"] for r in replies] == [True, False, False, True]
        assert [r["id"] for r in replies] == [1, 2, 3, 4]
