"""Every op of protocol.md, its success and its error paths, over a real socket.

Each section follows one op of the "Ops" chapter; the limits section starts
servers with small limits so that each `limit_exceeded` can be reached in a
few requests.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from conftest import (
    ADMIN_PASSWORD,
    PROTOCOL_OPS,
    USER_PASSWORD,
    Wire,
    create_user,
    expect_error,
    make_config,
    open_raw,
    open_user_wire,
    open_wire,
    running_server,
)
from tcpmq.server import Server

# The tests about the connection rather than an op also run over TLS (`over_tls`).
pytestmark = pytest.mark.every_store

# The fields each op documents (publish takes exactly one of data/messages).
OP_FIELDS = {
    "ping": [],
    "login": ["user", "password", "ttl"],
    "auth": ["token"],
    "whoami": [],
    "help": ["name"],
    "server.info": [],
    "user.create": ["name", "password", "role"],
    "user.list": [],
    "user.get": ["name"],
    "user.delete": ["name"],
    "user.passwd": ["name", "password"],
    "user.revoke_tokens": ["name"],
    "channel.create": ["name", "access"],
    "channel.list": [],
    "channel.get": ["name"],
    "channel.delete": ["name"],
    "channel.grant": ["name", "user", "rights"],
    "channel.revoke": ["name", "user", "rights"],
    "channel.update": ["name", "access"],
    "subscribe": ["channel", "queue", "ack_timeout", "overflow", "max_messages", "max_bytes"],
    "queue.list": ["channel"],
    "queue.delete": ["channel", "queue"],
    "queue.purge": ["channel", "queue"],
    "queue.update": ["channel", "queue", "overflow", "max_messages", "max_bytes"],
    "publish": ["channel", "data", "messages"],
    "pull": ["channel", "queue", "max", "wait"],
    "peek": ["channel", "queue", "max"],
    "ack": ["channel", "queue", "ids"],
    "nack": ["channel", "queue", "ids"],
    "stats": [],
    "store.backup": ["path"],
}
USER_KEYS = {"name", "role", "created_at"}
CHANNEL_KEYS = {"name", "owner", "access", "created_at", "published", "queue_count", "depth"}
QUEUE_KEYS = {
    *("name", "channel", "owner", "created_at", "ack_timeout", "depth", "inflight"),
    *("consumers", "oldest_age", "redeliveries"),
    *("overflow", "max_messages", "max_bytes", "dropped"),
}
MESSAGE_KEYS = {"id", "data", "published_at", "publisher", "attempt"}

DEFAULT_TOKEN_TTL = 86400
MAX_TOKEN_TTL = 2592000
# Server and test share one clock; this only absorbs slow CI machines.
CLOCK_SLACK = 30.0

GOOD_NAMES = ["a", "Z", "7", "a1", "A_b.c-d", "9-lives", "x" * 64, "a..", "a__", "a--"]
BAD_NAMES = [
    "",
    "-a",
    "_a",
    ".a",
    "a b",
    " a",
    "a ",
    "a/b",
    "a:b",
    "a@b",
    "a*",
    "caf\u00e9",
    "\u0430",
    "x" * 65,
    "a\n",
    "a\x00",
]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def assert_recent(value: Any, offset: float = 0.0) -> None:
    assert is_number(value), value
    assert abs(value - (time.time() + offset)) < CLOCK_SLACK, value


def assert_user(obj: dict[str, Any], name: str, role: str) -> None:
    assert set(obj) == USER_KEYS, obj
    assert obj["name"] == name and obj["role"] == role
    assert_recent(obj["created_at"])


def assert_queue(obj: dict[str, Any], **expected: Any) -> None:
    assert set(obj) == QUEUE_KEYS, obj
    assert_recent(obj["created_at"])
    for key, value in expected.items():
        assert obj[key] == value, (key, obj)


def assert_limit(error: dict[str, Any], limit: str, maximum: float) -> None:
    assert error["code"] == "limit_exceeded"
    assert error["limit"] == limit, error
    assert error["max"] == maximum, error


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def server_secret(server: Server, data_dir: Path) -> bytes:
    """The server's signing key: `<data_dir>/secret` (hex text), or in memory with no disk."""
    if server.config.store == "memory":
        assert not (data_dir / "secret").exists()
        key = server.app.users.secret
    else:
        key = bytes.fromhex((data_dir / "secret").read_text().strip())
    # Make sure it is the key: a token the server minted verifies with it.
    jwt.decode(server.mint_token("admin"), key, algorithms=["HS256"])
    return key


def sign(claims: dict[str, Any], key: bytes) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def channel_with_queue(wire: Wire, channel: str = "c", **subscribe: Any) -> dict[str, Any]:
    await wire.ok("channel.create", name=channel)
    return (await wire.ok("subscribe", channel=channel, **subscribe))["queue"]


# --- ping -------------------------------------------------------------------


async def test_ping(wire: Wire) -> None:
    assert await wire.call("ping") == {"ok": True}
    assert await wire.call("ping", id="p") == {"ok": True, "id": "p"}


async def test_ping_when_authenticated(alice: Wire) -> None:
    assert await alice.call("ping", id=2) == {"ok": True, "id": 2}


# --- login ------------------------------------------------------------------


async def test_login_with_the_right_password(wire: Wire) -> None:
    reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
    assert set(reply) == {"ok", "user", "role", "token", "expires_at"}
    assert reply["user"] == "admin" and reply["role"] == "admin"
    assert_recent(reply["expires_at"], DEFAULT_TOKEN_TTL)
    assert jwt.get_unverified_header(reply["token"])["alg"] == "HS256"
    claims = claims_of(reply["token"])
    assert claims["sub"] == "admin" and claims["role"] == "admin"
    assert isinstance(claims["uid"], str) and claims["uid"]
    assert_recent(claims["iat"])
    assert abs(claims["exp"] - reply["expires_at"]) <= 1
    assert await wire.ok("whoami") == {"ok": True, "user": "admin", "role": "admin"}


async def test_login_as_a_user(admin: Wire, wire: Wire) -> None:
    await create_user(admin, "alice")
    reply = await wire.ok("login", user="alice", password=USER_PASSWORD, id=1)
    assert reply["user"] == "alice" and reply["role"] == "user" and reply["id"] == 1
    assert claims_of(reply["token"])["sub"] == "alice"
    assert await wire.ok("whoami") == {"ok": True, "user": "alice", "role": "user"}


async def test_wrong_password_and_unknown_user_are_indistinguishable(
    admin: Wire, wire: Wire
) -> None:
    await create_user(admin, "alice")
    wrong = await wire.error("login", "auth_failed", user="alice", password="wrong-password")
    unknown = await wire.error("login", "auth_failed", user="nobody", password="wrong-password")
    assert wrong == unknown
    wrong_admin = await wire.error("login", "auth_failed", user="admin", password=USER_PASSWORD)
    assert wrong_admin == unknown
    await wire.error("whoami", "unauthenticated")


async def test_login_names_are_case_sensitive(wire: Wire) -> None:
    await wire.error("login", "auth_failed", user="Admin", password=ADMIN_PASSWORD)
    await wire.error("login", "auth_failed", user="admin", password=ADMIN_PASSWORD.upper())


async def test_failed_login_keeps_the_current_user(alice: Wire) -> None:
    await alice.error("login", "auth_failed", user="admin", password="wrong-password")
    assert (await alice.ok("whoami"))["user"] == "alice"


async def test_login_switches_the_user(alice: Wire) -> None:
    await alice.ok("login", user="admin", password=ADMIN_PASSWORD)
    assert await alice.ok("whoami") == {"ok": True, "user": "admin", "role": "admin"}
    await alice.ok("user.list")


@pytest.mark.over_tls
async def test_login_token_authenticates_a_new_connection(server: Server, wire: Wire) -> None:
    login = await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
    async with open_wire(server) as other:
        auth = await other.ok("auth", token=login["token"])
        assert set(auth) == {"ok", "user", "role", "expires_at"}
        assert auth["user"] == "admin" and auth["role"] == "admin"
        assert abs(auth["expires_at"] - login["expires_at"]) <= 1
        await other.ok("user.list")


@pytest.mark.parametrize("ttl", [1, 60, 3600, MAX_TOKEN_TTL])
async def test_login_ttl(wire: Wire, ttl: int) -> None:
    reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD, ttl=ttl)
    assert_recent(reply["expires_at"], ttl)
    assert abs(claims_of(reply["token"])["exp"] - reply["expires_at"]) <= 1


@pytest.mark.parametrize("ttl", [0, -1, MAX_TOKEN_TTL + 1, 1.5, 60.0, "60", None, True])
async def test_login_ttl_out_of_range(wire: Wire, ttl: Any) -> None:
    error = await wire.error("login", "bad_request", user="admin", password=ADMIN_PASSWORD, ttl=ttl)
    assert error["field"] == "ttl"
    await wire.error("whoami", "unauthenticated")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"password": ADMIN_PASSWORD}, "user"),
        ({"user": "admin"}, "password"),
        ({"user": "bad name", "password": ADMIN_PASSWORD}, "user"),
        ({"user": 1, "password": ADMIN_PASSWORD}, "user"),
        ({"user": "admin", "password": None}, "password"),
    ],
    ids=repr,
)
async def test_login_bad_fields(wire: Wire, fields: dict[str, Any], field: str) -> None:
    error = await wire.error("login", "bad_request", **fields)
    assert error["field"] == field


async def test_login_ttl_limits_are_settings(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", default_token_ttl=50, max_token_ttl=100) as srv,
        open_wire(srv) as wire,
    ):
        reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
        assert_recent(reply["expires_at"], 50)
        reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD, ttl=100)
        assert_recent(reply["expires_at"], 100)
        error = await wire.error(
            "login", "bad_request", user="admin", password=ADMIN_PASSWORD, ttl=101
        )
        assert error["field"] == "ttl"


# --- auth -------------------------------------------------------------------


async def test_auth_with_a_minted_token(server: Server, wire: Wire) -> None:
    reply = await wire.ok("auth", token=server.mint_token("admin"), id="a")
    assert set(reply) == {"ok", "id", "user", "role", "expires_at"}
    assert reply["user"] == "admin" and reply["role"] == "admin"
    assert_recent(reply["expires_at"], DEFAULT_TOKEN_TTL)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
        "x" * 4096,
    ],
    ids=lambda t: repr(t)[:30],
)
async def test_auth_malformed_token(wire: Wire, token: str) -> None:
    await wire.error("auth", "auth_failed", token=token)
    await wire.error("whoami", "unauthenticated")


async def test_auth_token_too_long(wire: Wire) -> None:
    error = await wire.error("auth", "bad_request", token="x" * 4097)
    assert error["field"] == "token"


async def test_auth_forged_token(server: Server, wire: Wire) -> None:
    claims = claims_of(server.mint_token("admin"))
    forged = sign(claims, b"another-secret-that-is-at-least-32-bytes-long")
    await wire.error("auth", "auth_failed", token=forged)
    await wire.error("whoami", "unauthenticated")


async def test_auth_unsigned_token(server: Server, wire: Wire) -> None:
    claims = claims_of(server.mint_token("admin"))
    header = b64url(orjson.dumps({"alg": "none", "typ": "JWT"}))
    unsigned = f"{header}.{b64url(orjson.dumps(claims))}."
    await wire.error("auth", "auth_failed", token=unsigned)


async def test_auth_tampered_payload(server: Server, admin: Wire, wire: Wire) -> None:
    await create_user(admin, "alice")
    header, _, signature = server.mint_token("alice").split(".")
    admin_payload = server.mint_token("admin").split(".")[1]
    await wire.error("auth", "auth_failed", token=f"{header}.{admin_payload}.{signature}")


async def test_auth_expired_token(server: Server, tmp_path: Path, wire: Wire) -> None:
    key = server_secret(server, tmp_path / "data")
    claims = claims_of(server.mint_token("admin"))
    now = int(time.time())
    fresh = sign({**claims, "iat": now - 100, "exp": now + 3600}, key)
    expired = sign({**claims, "iat": now - 100, "exp": now - 10}, key)
    await wire.error("auth", "auth_failed", token=expired)
    await wire.error("whoami", "unauthenticated")
    # The same claims with a future expiry pass: only the expiry was wrong.
    assert (await wire.ok("auth", token=fresh))["expires_at"] == now + 3600


async def test_auth_token_missing_a_claim(server: Server, tmp_path: Path, wire: Wire) -> None:
    key = server_secret(server, tmp_path / "data")
    claims = claims_of(server.mint_token("admin"))
    for claim in ("sub", "uid", "exp"):
        partial = {k: v for k, v in claims.items() if k != claim}
        await wire.error("auth", "auth_failed", token=sign(partial, key))


async def test_auth_token_of_a_user_that_never_existed(
    server: Server, tmp_path: Path, wire: Wire
) -> None:
    key = server_secret(server, tmp_path / "data")
    claims = claims_of(server.mint_token("admin"))
    ghost = sign({**claims, "sub": "ghost", "role": "admin"}, key)
    await wire.error("auth", "auth_failed", token=ghost)


async def test_auth_role_claim_does_not_count(
    server: Server, tmp_path: Path, admin: Wire, wire: Wire
) -> None:
    await create_user(admin, "alice")
    key = server_secret(server, tmp_path / "data")
    claims = claims_of(server.mint_token("alice"))
    promoted = sign({**claims, "role": "admin"}, key)
    reply = await wire.ok("auth", token=promoted)
    assert reply["user"] == "alice" and reply["role"] == "user"
    await wire.error("user.list", "forbidden")


async def test_auth_token_of_a_deleted_user(server: Server, admin: Wire, wire: Wire) -> None:
    await create_user(admin, "alice")
    token = server.mint_token("alice")
    await admin.ok("user.delete", name="alice")
    await wire.error("auth", "auth_failed", token=token)
    await wire.error("whoami", "unauthenticated")


async def test_auth_old_token_of_a_recreated_user(server: Server, admin: Wire, wire: Wire) -> None:
    await create_user(admin, "alice")
    old = server.mint_token("alice")
    await admin.ok("user.delete", name="alice")
    await create_user(admin, "alice")
    await wire.error("auth", "auth_failed", token=old)
    assert (await wire.ok("auth", token=server.mint_token("alice")))["user"] == "alice"


async def test_a_token_expiring_later_does_not_end_the_session(
    server: Server, admin: Wire, wire: Wire
) -> None:
    await create_user(admin, "alice")
    reply = await wire.ok("auth", token=server.mint_token("alice", ttl=1))
    assert_recent(reply["expires_at"], 1)
    await channel_with_queue(wire)
    # Outlive the token, waiting on the server rather than sleeping here.
    assert (await wire.ok("pull", channel="c", wait=1.5))["messages"] == []
    assert await wire.ok("whoami") == {"ok": True, "user": "alice", "role": "user"}
    assert (await wire.ok("publish", channel="c", data=1))["queues"] == 1


async def test_failed_auth_keeps_the_current_user(alice: Wire) -> None:
    await alice.error("auth", "auth_failed", token="garbage")
    assert (await alice.ok("whoami"))["user"] == "alice"


async def test_auth_switches_the_user(server: Server, alice: Wire, bob: Wire) -> None:
    reply = await alice.ok("auth", token=server.mint_token("bob"))
    assert reply["user"] == "bob"
    assert await alice.ok("whoami") == {"ok": True, "user": "bob", "role": "user"}


# --- whoami and help --------------------------------------------------------


async def test_whoami(admin: Wire, alice: Wire) -> None:
    assert await alice.ok("whoami") == {"ok": True, "user": "alice", "role": "user"}
    assert await admin.ok("whoami") == {"ok": True, "user": "admin", "role": "admin"}


def test_the_op_list_matches_protocol_md() -> None:
    text = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
    ops_chapter = text.split("\n## Ops\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^### (\S+)$", ops_chapter, re.MULTILINE)) == PROTOCOL_OPS


async def test_help_shows_one_op_by_name(alice: Wire) -> None:
    reply = await alice.ok("help", name="pull")
    assert reply["ops"] == [
        {
            "op": "pull",
            "fields": "channel, queue?, max?, wait?",
            "summary": reply["ops"][0]["summary"],
        }
    ]
    assert (await alice.error("help", "not_found", name="nonsense"))["message"]
    assert (await alice.error("help", "bad_request", name=1))["field"] == "name"


async def test_help_lists_every_op(alice: Wire) -> None:
    reply = await alice.ok("help")
    assert set(reply) == {"ok", "ops"}
    entries = reply["ops"]
    names = [entry["op"] for entry in entries]
    assert len(names) == len(set(names)), names
    assert set(names) == PROTOCOL_OPS
    for entry in entries:
        assert set(entry) == {"op", "fields", "summary"}, entry
        assert isinstance(entry["fields"], str) and isinstance(entry["summary"], str)
        assert entry["summary"].strip(), entry
        words = set(re.findall(r"[a-z_]+", entry["fields"]))
        assert words == set(OP_FIELDS[entry["op"]]), entry
    by_name = {entry["op"]: entry for entry in entries}
    assert by_name["ack"]["fields"] == "channel, queue?, ids"
    assert by_name["pull"]["fields"] == "channel, queue?, max?, wait?"


# --- user.create ------------------------------------------------------------


async def test_user_create(admin: Wire) -> None:
    reply = await admin.ok("user.create", name="alice", password=USER_PASSWORD)
    assert set(reply) == {"ok", "user"}
    assert_user(reply["user"], "alice", "user")


async def test_user_create_admin_role(server: Server, admin: Wire) -> None:
    reply = await admin.ok("user.create", name="root", password=USER_PASSWORD, role="admin")
    assert_user(reply["user"], "root", "admin")
    reply = await admin.ok("user.create", name="plain", password=USER_PASSWORD, role="user")
    assert_user(reply["user"], "plain", "user")
    async with open_user_wire(server, "root") as root:
        await root.ok("user.list")


async def test_created_user_can_log_in(admin: Wire, wire: Wire) -> None:
    await admin.ok("user.create", name="carol", password="p\u00e4ssw\u00f6rd")
    reply = await wire.ok("login", user="carol", password="p\u00e4ssw\u00f6rd")
    assert reply["role"] == "user"


async def test_user_create_already_exists(admin: Wire) -> None:
    await create_user(admin, "alice")
    await admin.error("user.create", "already_exists", name="alice", password=USER_PASSWORD)
    await admin.error("user.create", "already_exists", name="admin", password=USER_PASSWORD)
    # Names are case-sensitive.
    await create_user(admin, "Alice")


@pytest.mark.parametrize("name", GOOD_NAMES)
async def test_user_create_good_names(admin: Wire, name: str) -> None:
    reply = await admin.ok("user.create", name=name, password=USER_PASSWORD)
    assert reply["user"]["name"] == name


@pytest.mark.parametrize("name", [*BAD_NAMES, 5, None, ["a"]], ids=repr)
async def test_user_create_bad_names(admin: Wire, name: Any) -> None:
    error = await admin.error("user.create", "bad_request", name=name, password=USER_PASSWORD)
    assert error["field"] == "name"


@pytest.mark.parametrize("length", [8, 9, 1024])
async def test_user_create_password_lengths_accepted(admin: Wire, length: int) -> None:
    await admin.ok("user.create", name="carol", password="p" * length)


@pytest.mark.parametrize(
    "password", ["\u00e4" * 8, "\U0001f600" * 8, "\u00e4" * 1024], ids=lambda p: f"{p[0]}*{len(p)}"
)
async def test_password_length_counts_characters(admin: Wire, wire: Wire, password: str) -> None:
    await admin.ok("user.create", name="carol", password=password)
    assert (await wire.ok("login", user="carol", password=password))["user"] == "carol"


@pytest.mark.parametrize("password", ["", "p" * 7, "\u00e4" * 7, "p" * 1025], ids=len)
async def test_user_create_password_lengths_refused(admin: Wire, password: str) -> None:
    error = await admin.error("user.create", "bad_request", name="carol", password=password)
    assert error["field"] == "password"
    await admin.error("user.get", "not_found", name="carol")


@pytest.mark.parametrize("role", ["root", "Admin", "", "users"])
async def test_user_create_bad_role(admin: Wire, role: str) -> None:
    error = await admin.error(
        "user.create", "bad_request", name="carol", password=USER_PASSWORD, role=role
    )
    assert error["field"] == "role"


async def test_user_create_missing_fields(admin: Wire) -> None:
    assert (await admin.error("user.create", "bad_request", name="carol"))["field"] == "password"
    error = await admin.error("user.create", "bad_request", password=USER_PASSWORD)
    assert error["field"] == "name"


async def test_user_create_needs_an_admin(admin: Wire, alice: Wire) -> None:
    await alice.error("user.create", "forbidden", name="carol", password=USER_PASSWORD)
    await alice.error(
        "user.create", "forbidden", name="carol", password=USER_PASSWORD, role="admin"
    )
    await admin.error("user.get", "not_found", name="carol")


# --- user.list and user.get -------------------------------------------------


async def test_user_list_sorted_by_name(admin: Wire) -> None:
    for name in ("carol", "alice", "bob"):
        await create_user(admin, name)
    await create_user(admin, "zed", role="admin")
    reply = await admin.ok("user.list")
    assert set(reply) == {"ok", "users"}
    users = reply["users"]
    assert [u["name"] for u in users] == ["admin", "alice", "bob", "carol", "zed"]
    roles = {u["name"]: u["role"] for u in users}
    assert roles == {
        "admin": "admin",
        "alice": "user",
        "bob": "user",
        "carol": "user",
        "zed": "admin",
    }
    for user in users:
        assert_user(user, user["name"], user["role"])


async def test_user_list_needs_an_admin(alice: Wire) -> None:
    await alice.error("user.list", "forbidden")


async def test_user_get(admin: Wire, alice: Wire) -> None:
    reply = await admin.ok("user.get", name="alice")
    assert set(reply) == {"ok", "user"}
    assert_user(reply["user"], "alice", "user")
    assert_user((await admin.ok("user.get", name="admin"))["user"], "admin", "admin")


async def test_user_may_get_itself_only(alice: Wire, bob: Wire) -> None:
    assert_user((await alice.ok("user.get", name="alice"))["user"], "alice", "user")
    await alice.error("user.get", "forbidden", name="bob")
    await alice.error("user.get", "forbidden", name="admin")
    # Neither admin nor that user: forbidden, whether the user exists or not.
    await alice.error("user.get", "forbidden", name="ghost")


async def test_user_get_not_found_and_bad_name(admin: Wire) -> None:
    await admin.error("user.get", "not_found", name="ghost")
    await admin.error("user.get", "not_found", name="Admin")
    assert (await admin.error("user.get", "bad_request", name="no such"))["field"] == "name"


# --- user.delete ------------------------------------------------------------


async def test_user_delete(admin: Wire) -> None:
    await create_user(admin, "alice")
    assert await admin.call("user.delete", name="alice") == {"ok": True}
    await admin.error("user.get", "not_found", name="alice")
    await admin.error("user.delete", "not_found", name="alice")
    assert [u["name"] for u in (await admin.ok("user.list"))["users"]] == ["admin"]


async def test_user_delete_needs_an_admin(admin: Wire, alice: Wire, bob: Wire) -> None:
    await alice.error("user.delete", "forbidden", name="bob")
    await alice.error("user.delete", "forbidden", name="admin")
    await admin.ok("user.get", name="bob")


async def test_user_delete_not_found_and_bad_name(admin: Wire) -> None:
    await admin.error("user.delete", "not_found", name="ghost")
    assert (await admin.error("user.delete", "bad_request", name="-x"))["field"] == "name"


async def test_cannot_delete_the_last_admin(server: Server, admin: Wire) -> None:
    await admin.error("user.delete", "forbidden", name="admin")
    await create_user(admin, "root", role="admin")
    async with open_user_wire(server, "root") as root:
        await root.ok("user.delete", name="admin")
        await root.error("user.delete", "forbidden", name="root")
        assert [u["name"] for u in (await root.ok("user.list"))["users"]] == ["root"]


@pytest.mark.over_tls
async def test_user_delete_ends_the_users_connections(
    server: Server, admin: Wire, alice: Wire
) -> None:
    async with open_user_wire(server, "alice") as second:
        assert await admin.call("user.delete", name="alice", id=1) == {"ok": True, "id": 1}
        for wire in (alice, second):
            bye = await wire.recv()
            assert bye["event"] == "bye", bye
            assert set(bye) == {"event", "error"}
            expect_error({"ok": False, **bye}, "auth_failed")
            assert await wire.rest() == b""
    # The admin's own connection goes on.
    await admin.ok("ping")


@pytest.mark.over_tls
async def test_admin_deleting_itself_gets_its_reply_then_bye(server: Server, admin: Wire) -> None:
    await create_user(admin, "root", role="admin")
    assert await admin.call("user.delete", name="admin", id="self") == {"ok": True, "id": "self"}
    bye = await admin.recv()
    assert bye["event"] == "bye"
    expect_error({"ok": False, **bye}, "auth_failed")
    assert await admin.rest() == b""
    async with open_user_wire(server, "root") as root:
        assert [u["name"] for u in (await root.ok("user.list"))["users"]] == ["root"]


async def test_user_delete_leaves_other_users_connected(
    admin: Wire, alice: Wire, bob: Wire
) -> None:
    await admin.ok("user.delete", name="alice")
    assert (await alice.recv())["event"] == "bye"
    assert await bob.ok("whoami") == {"ok": True, "user": "bob", "role": "user"}


async def test_user_delete_deletes_their_queues_and_hands_their_channels_to_the_admin(
    admin: Wire, alice: Wire, bob: Wire
) -> None:
    await admin.ok("channel.create", name="shared")
    await alice.ok("channel.create", name="alices")
    await alice.ok("subscribe", channel="shared")
    await alice.ok("subscribe", channel="shared", queue="extra")
    await alice.ok("subscribe", channel="alices")
    await bob.ok("subscribe", channel="shared")
    await admin.ok("publish", channel="shared", data="before")
    await admin.ok("user.delete", name="alice")
    queues = (await admin.ok("queue.list", channel="shared"))["queues"]
    assert [q["name"] for q in queues] == ["bob"]
    assert (await admin.ok("queue.list", channel="alices"))["queues"] == []
    channel = (await admin.ok("channel.get", name="alices"))["channel"]
    assert channel["owner"] == "admin" and channel["queue_count"] == 0
    # A new user of the same name inherits nothing.
    await create_user(admin, "alice")
    owners = {c["name"]: c["owner"] for c in (await admin.ok("channel.list"))["channels"]}
    assert owners == {"alices": "admin", "shared": "admin"}
    published = await admin.ok("publish", channel="shared", data="after")
    assert published["queues"] == 1
    await admin.error("pull", "not_found", channel="shared", queue="alice")


async def test_deleted_user_connection_cannot_be_reused(admin: Wire, alice: Wire) -> None:
    await admin.ok("user.delete", name="alice")
    assert (await alice.recv())["event"] == "bye"
    assert await alice.rest() == b""


# --- channel.create, channel.list, channel.get ------------------------------


async def test_channel_create(alice: Wire) -> None:
    reply = await alice.ok("channel.create", name="orders")
    assert set(reply) == {"ok", "channel"}
    channel = reply["channel"]
    assert set(channel) == CHANNEL_KEYS
    assert channel["name"] == "orders" and channel["owner"] == "alice"
    assert channel["published"] == 0 and channel["queue_count"] == 0
    assert_recent(channel["created_at"])


async def test_channel_create_already_exists(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="orders")
    await alice.error("channel.create", "already_exists", name="orders")
    await bob.error("channel.create", "already_exists", name="orders")
    await bob.ok("channel.create", name="Orders")


@pytest.mark.parametrize("name", GOOD_NAMES)
async def test_channel_create_good_names(alice: Wire, name: str) -> None:
    assert (await alice.ok("channel.create", name=name))["channel"]["name"] == name


@pytest.mark.parametrize("name", [*BAD_NAMES, 1, None], ids=repr)
async def test_channel_create_bad_names(alice: Wire, name: Any) -> None:
    assert (await alice.error("channel.create", "bad_request", name=name))["field"] == "name"


async def test_channel_list_sorted_and_visible_to_all(admin: Wire, alice: Wire, bob: Wire) -> None:
    await bob.ok("channel.create", name="b")
    await alice.ok("channel.create", name="c")
    await admin.ok("channel.create", name="a")
    for wire in (admin, alice, bob):
        reply = await wire.ok("channel.list")
        assert set(reply) == {"ok", "channels"}
        channels = reply["channels"]
        assert [(c["name"], c["owner"]) for c in channels] == [
            ("a", "admin"),
            ("b", "bob"),
            ("c", "alice"),
        ]
        for channel in channels:
            assert set(channel) == CHANNEL_KEYS


async def test_channel_list_empty(alice: Wire) -> None:
    assert await alice.ok("channel.list") == {"ok": True, "channels": []}


async def test_channel_counters(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c")
    await bob.ok("subscribe", channel="c")
    await alice.ok("publish", channel="c", data=1)
    await bob.ok("publish", channel="c", messages=[2, 3])
    [channel] = (await bob.ok("channel.list"))["channels"]
    assert channel["published"] == 3 and channel["queue_count"] == 2


async def test_channel_get(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await bob.ok("subscribe", channel="c", queue="zeta", ack_timeout=60)
    await alice.ok("subscribe", channel="c")
    await alice.ok("publish", channel="c", messages=["x", "y"])
    await alice.ok("pull", channel="c")
    reply = await bob.ok("channel.get", name="c")
    assert set(reply) == {"ok", "channel"}
    channel = reply["channel"]
    assert set(channel) == CHANNEL_KEYS | {"grants", "queues"}
    assert channel["owner"] == "alice" and channel["published"] == 2
    assert channel["queue_count"] == 2
    alice_q, zeta = channel["queues"]
    assert_queue(alice_q, name="alice", channel="c", owner="alice", depth=1, inflight=1)
    assert_queue(zeta, name="zeta", channel="c", owner="bob", ack_timeout=60, depth=2, inflight=0)


async def test_channel_get_not_found_and_bad_name(alice: Wire) -> None:
    await alice.error("channel.get", "not_found", name="nowhere")
    assert (await alice.error("channel.get", "bad_request", name="a b"))["field"] == "name"


# --- channel.delete ---------------------------------------------------------


async def test_channel_delete_by_owner(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", data=1)
    assert await alice.call("channel.delete", name="c") == {"ok": True}
    await alice.error("channel.get", "not_found", name="c")
    await alice.error("channel.delete", "not_found", name="c")
    await alice.error("pull", "not_found", channel="c")
    assert (await alice.ok("channel.list"))["channels"] == []


async def test_channel_delete_by_admin(admin: Wire, alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await admin.ok("channel.delete", name="c")
    await alice.error("channel.get", "not_found", name="c")


async def test_channel_delete_by_someone_else_is_forbidden(alice: Wire, bob: Wire) -> None:
    await channel_with_queue(alice)
    await bob.ok("subscribe", channel="c")
    await bob.error("channel.delete", "forbidden", name="c")
    assert (await bob.ok("channel.get", name="c"))["channel"]["queue_count"] == 2


async def test_recreated_channel_starts_afresh(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=[1, 2, 3])
    await alice.ok("channel.delete", name="c")
    channel = (await alice.ok("channel.create", name="c"))["channel"]
    assert channel["published"] == 0 and channel["queue_count"] == 0
    await alice.ok("subscribe", channel="c")
    assert (await alice.ok("publish", channel="c", data="new"))["message_ids"] == [1]
    [message] = (await alice.ok("pull", channel="c", max=10))["messages"]
    assert message["data"] == "new"


async def test_channel_delete_bad_name(alice: Wire) -> None:
    assert (await alice.error("channel.delete", "bad_request", name=""))["field"] == "name"


# --- subscribe --------------------------------------------------------------


async def test_subscribe_default_queue_is_the_user_name(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    reply = await alice.ok("subscribe", channel="c")
    assert set(reply) == {"ok", "queue", "created"}
    assert reply["created"] is True
    assert_queue(
        reply["queue"],
        name="alice",
        channel="c",
        owner="alice",
        ack_timeout=30,
        depth=0,
        inflight=0,
    )


async def test_subscribe_named_queue(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    reply = await alice.ok("subscribe", channel="c", queue="billing", ack_timeout=60)
    assert reply["created"] is True
    assert_queue(reply["queue"], name="billing", owner="alice", ack_timeout=60)


async def test_subscribe_again_is_not_an_error(alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    first = await alice.ok("subscribe", channel="c", ack_timeout=5)
    await alice.ok("publish", channel="c", data=1)
    again = await alice.ok("subscribe", channel="c")
    assert again["created"] is False
    # Without ack_timeout the old one stays; the messages stay too.
    assert_queue(again["queue"], name="alice", ack_timeout=5, depth=1)
    assert again["queue"]["created_at"] == first["queue"]["created_at"]
    replaced = await alice.ok("subscribe", channel="c", ack_timeout=7.5)
    assert replaced["created"] is False
    assert_queue(replaced["queue"], ack_timeout=7.5, depth=1)
    assert len((await alice.ok("queue.list", channel="c"))["queues"]) == 1


@pytest.mark.parametrize("ack_timeout", [0.1, 0.25, 1, 43200])
async def test_subscribe_ack_timeout_bounds_accepted(alice: Wire, ack_timeout: float) -> None:
    await alice.ok("channel.create", name="c")
    reply = await alice.ok("subscribe", channel="c", ack_timeout=ack_timeout)
    assert reply["queue"]["ack_timeout"] == ack_timeout


@pytest.mark.parametrize("ack_timeout", [0, 0.09, -1, 43200.5, 1e9, "5", None, True])
async def test_subscribe_ack_timeout_bounds_refused(alice: Wire, ack_timeout: Any) -> None:
    await alice.ok("channel.create", name="c")
    error = await alice.error("subscribe", "bad_request", channel="c", ack_timeout=ack_timeout)
    assert error["field"] == "ack_timeout"
    assert (await alice.ok("queue.list", channel="c"))["queues"] == []


async def test_subscribe_not_found_and_bad_names(alice: Wire) -> None:
    await alice.error("subscribe", "not_found", channel="nowhere")
    await alice.ok("channel.create", name="c")
    assert (await alice.error("subscribe", "bad_request", channel="c", queue="-q"))["field"] == (
        "queue"
    )
    error = await alice.error("subscribe", "bad_request", channel="c d")
    assert error["field"] == "channel"
    assert (await alice.error("subscribe", "bad_request"))["field"] == "channel"


async def test_subscribe_to_another_users_queue_is_forbidden(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c", queue="shared")
    await alice.ok("subscribe", channel="c")
    await bob.error("subscribe", "forbidden", channel="c", queue="shared")
    await bob.error("subscribe", "forbidden", channel="c", queue="alice", ack_timeout=1)
    queues = (await bob.ok("queue.list", channel="c"))["queues"]
    assert [(q["name"], q["owner"], q["ack_timeout"]) for q in queues] == [
        ("alice", "alice", 30),
        ("shared", "alice", 30),
    ]


async def test_an_admin_has_the_owners_rights_on_any_queue(admin: Wire, alice: Wire) -> None:
    await alice.ok("channel.create", name="c")
    await alice.ok("subscribe", channel="c", queue="work")
    await alice.ok("publish", channel="c", data="job")
    # As it may pull from it, an admin may subscribe to the queue: it stays alice's.
    reply = await admin.ok("subscribe", channel="c", queue="work", ack_timeout=5)
    assert reply["created"] is False
    assert (reply["queue"]["owner"], reply["queue"]["ack_timeout"]) == ("alice", 5)
    [message] = (await admin.ok("pull", channel="c", queue="work"))["messages"]
    assert (await admin.ok("ack", channel="c", queue="work", ids=[message["id"]]))["acked"] == 1


async def test_same_queue_name_in_different_channels(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c1")
    await alice.ok("channel.create", name="c2")
    await alice.ok("subscribe", channel="c1", queue="q")
    assert (await bob.ok("subscribe", channel="c2", queue="q"))["created"] is True


# --- queue.list and queue.delete --------------------------------------------


async def test_queue_list(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c")
    assert await alice.ok("queue.list", channel="c") == {"ok": True, "queues": []}
    await bob.ok("subscribe", channel="c", queue="b2")
    await alice.ok("subscribe", channel="c", queue="a1", ack_timeout=9)
    await alice.ok("subscribe", channel="c")
    await alice.ok("publish", channel="c", messages=[1, 2, 3])
    await alice.ok("pull", channel="c", queue="a1", max=2)
    reply = await bob.ok("queue.list", channel="c")
    assert set(reply) == {"ok", "queues"}
    a1, alice_q, b2 = reply["queues"]
    assert_queue(a1, name="a1", channel="c", owner="alice", ack_timeout=9, depth=1, inflight=2)
    assert_queue(alice_q, name="alice", owner="alice", ack_timeout=30, depth=3, inflight=0)
    assert_queue(b2, name="b2", owner="bob", depth=3, inflight=0)


async def test_queue_list_not_found(alice: Wire) -> None:
    await alice.error("queue.list", "not_found", channel="nowhere")
    assert (await alice.error("queue.list", "bad_request", channel="a b"))["field"] == "channel"


async def test_queue_delete_by_owner(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", data=1)
    assert await alice.call("queue.delete", channel="c", queue="alice") == {"ok": True}
    assert (await alice.ok("queue.list", channel="c"))["queues"] == []
    await alice.error("queue.delete", "not_found", channel="c", queue="alice")
    await alice.error("pull", "not_found", channel="c")
    assert (await alice.ok("publish", channel="c", data=2))["queues"] == 0
    # Subscribing again makes a new, empty queue.
    again = await alice.ok("subscribe", channel="c")
    assert again["created"] is True and again["queue"]["depth"] == 0


async def test_queue_delete_permissions(
    server: Server, admin: Wire, alice: Wire, bob: Wire
) -> None:
    await create_user(admin, "carol")
    await alice.ok("channel.create", name="c")
    for queue in ("b1", "b2", "b3"):
        await bob.ok("subscribe", channel="c", queue=queue)
    async with open_user_wire(server, "carol") as carol:
        await carol.ok("subscribe", channel="c", queue="cq")
        # Neither the queue's owner, the channel's owner nor an admin.
        await carol.error("queue.delete", "forbidden", channel="c", queue="b1")
        await bob.error("queue.delete", "forbidden", channel="c", queue="cq")
        # The queue's owner, the channel's owner, an admin.
        await bob.ok("queue.delete", channel="c", queue="b1")
        await alice.ok("queue.delete", channel="c", queue="b2")
        await admin.ok("queue.delete", channel="c", queue="b3")
        await alice.ok("queue.delete", channel="c", queue="cq")
    assert (await alice.ok("queue.list", channel="c"))["queues"] == []


async def test_queue_delete_not_found_and_fields(alice: Wire) -> None:
    await alice.error("queue.delete", "not_found", channel="nowhere", queue="q")
    await alice.ok("channel.create", name="c")
    await alice.error("queue.delete", "not_found", channel="c", queue="q")
    assert (await alice.error("queue.delete", "bad_request", channel="c"))["field"] == "queue"
    error = await alice.error("queue.delete", "bad_request", channel="c", queue="q q")
    assert error["field"] == "queue"


# --- publish ----------------------------------------------------------------


async def test_publish_single(alice: Wire) -> None:
    await channel_with_queue(alice)
    reply = await alice.ok("publish", channel="c", data={"order": 1234, "total": "19.90"})
    assert reply == {"ok": True, "message_ids": [1], "queues": 1}


async def test_publish_batch_and_consecutive_ids(alice: Wire) -> None:
    await channel_with_queue(alice)
    assert (await alice.ok("publish", channel="c", data="a"))["message_ids"] == [1]
    reply = await alice.ok("publish", channel="c", messages=["a", "b", 3])
    assert reply == {"ok": True, "message_ids": [2, 3, 4], "queues": 1}
    assert (await alice.ok("publish", channel="c", messages=[None]))["message_ids"] == [5]
    reply = await alice.ok("publish", channel="c", messages=list(range(1000)))
    assert reply["message_ids"] == list(range(6, 1006))


async def test_publish_ids_are_per_channel(alice: Wire) -> None:
    await channel_with_queue(alice, "c1")
    await channel_with_queue(alice, "c2")
    await alice.ok("publish", channel="c1", messages=[1, 2])
    assert (await alice.ok("publish", channel="c2", data=1))["message_ids"] == [1]
    assert (await alice.ok("publish", channel="c1", data=3))["message_ids"] == [3]


async def test_publish_counts_queues(alice: Wire, bob: Wire) -> None:
    await alice.ok("channel.create", name="c")
    assert await alice.ok("publish", channel="c", data=0) == {
        "ok": True,
        "message_ids": [1],
        "queues": 0,
    }
    await alice.ok("subscribe", channel="c")
    await alice.ok("subscribe", channel="c", queue="q2")
    await bob.ok("subscribe", channel="c")
    assert (await bob.ok("publish", channel="c", messages=[1, 2]))["queues"] == 3
    # The message published with no queue was kept nowhere.
    pulled = await alice.ok("pull", channel="c", max=10)
    assert [m["id"] for m in pulled["messages"]] == [2, 3]


@pytest.mark.parametrize(
    "fields",
    [{}, {"data": 1, "messages": [1]}, {"data": None, "messages": [1]}],
    ids=["neither", "both", "both-null-data"],
)
async def test_publish_needs_exactly_one_of_data_and_messages(
    alice: Wire, fields: dict[str, Any]
) -> None:
    await channel_with_queue(alice)
    await alice.error("publish", "bad_request", channel="c", **fields)
    assert (await alice.ok("queue.list", channel="c"))["queues"][0]["depth"] == 0


@pytest.mark.parametrize("count", [0, 1001])
async def test_publish_batch_size_bounds(alice: Wire, count: int) -> None:
    await channel_with_queue(alice)
    error = await alice.error("publish", "bad_request", channel="c", messages=[1] * count)
    assert error["field"] == "messages"
    assert (await alice.ok("channel.get", name="c"))["channel"]["published"] == 0


async def test_publish_not_found_and_bad_channel(alice: Wire) -> None:
    await alice.error("publish", "not_found", channel="nowhere", data=1)
    error = await alice.error("publish", "bad_request", channel="no where", data=1)
    assert error["field"] == "channel"


ANY_JSON = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1.5,
    -0.25,
    1e300,
    "",
    "text",
    "\u00e9\u00e0\u00fc \u6f22\u5b57 \U0001f600 \u2713",
    'quote " backslash \\ newline \n tab \t nul \u0000',
    [],
    {},
    [1, "two", None, [3, [4, [5]]]],
    {"a": {"b": {"c": [1, {"d": None}]}}, "\u00e9": "\u00e9"},
]


@pytest.mark.parametrize("value", ANY_JSON, ids=repr)
async def test_publish_any_json_value(alice: Wire, value: Any) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", data=value)
    await alice.ok("publish", channel="c", messages=[value, value])
    messages = (await alice.ok("pull", channel="c", max=10))["messages"]
    assert [m["data"] for m in messages] == [value] * 3
    for message in messages:
        assert type(message["data"]) is type(value)


async def test_publish_null_data_is_data(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.send_raw(b'{"op":"publish","channel":"c","data":null}\n')
    assert (await alice.recv())["message_ids"] == [1]
    [message] = (await alice.ok("pull", channel="c"))["messages"]
    assert message["data"] is None


# --- pull -------------------------------------------------------------------


async def test_pull_message_fields(alice: Wire, bob: Wire) -> None:
    await channel_with_queue(alice)
    await bob.ok("publish", channel="c", data={"k": [1, 2]})
    reply = await alice.ok("pull", channel="c", queue="alice")
    assert set(reply) == {"ok", "messages"}
    [message] = reply["messages"]
    assert set(message) == MESSAGE_KEYS
    assert message["id"] == 1 and message["data"] == {"k": [1, 2]}
    assert message["publisher"] == "bob" and message["attempt"] == 1
    assert_recent(message["published_at"])


async def test_pull_default_max_is_one_and_order_is_kept(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=list("abcdefg"))
    [first] = (await alice.ok("pull", channel="c"))["messages"]
    assert first["data"] == "a"
    three = (await alice.ok("pull", channel="c", max=3))["messages"]
    assert [m["data"] for m in three] == ["b", "c", "d"]
    rest = (await alice.ok("pull", channel="c", max=1000))["messages"]
    assert [m["id"] for m in rest] == [5, 6, 7]
    assert await alice.ok("pull", channel="c", max=10) == {"ok": True, "messages": []}


async def test_pull_with_wait_returns_ready_messages_at_once(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=[1, 2])
    # wait is the longest allowed: if the pull waited at all, the test would time out.
    reply = await asyncio.wait_for(alice.ok("pull", channel="c", max=5, wait=300), 5)
    assert [m["data"] for m in reply["messages"]] == [1, 2]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max": 0}, "max"),
        ({"max": -1}, "max"),
        ({"max": 1001}, "max"),
        ({"wait": -0.1}, "wait"),
        ({"wait": 300.5}, "wait"),
        ({"wait": 301}, "wait"),
        ({"queue": "-q"}, "queue"),
    ],
    ids=repr,
)
async def test_pull_bounds(alice: Wire, fields: dict[str, Any], field: str) -> None:
    await channel_with_queue(alice)
    assert (await alice.error("pull", "bad_request", channel="c", **fields))["field"] == field


async def test_pull_max_1000_is_accepted(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=list(range(1000)))
    reply = await alice.ok("pull", channel="c", max=1000, wait=0)
    assert [m["data"] for m in reply["messages"]] == list(range(1000))


async def test_pull_not_found(alice: Wire) -> None:
    await alice.error("pull", "not_found", channel="nowhere")
    await alice.ok("channel.create", name="c")
    await alice.error("pull", "not_found", channel="c")
    await alice.error("pull", "not_found", channel="c", queue="other")


async def test_pull_permissions(admin: Wire, alice: Wire, bob: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=[1, 2])
    await bob.error("pull", "forbidden", channel="c", queue="alice")
    [message] = (await admin.ok("pull", channel="c", queue="alice"))["messages"]
    assert message["data"] == 1
    assert (await admin.ok("ack", channel="c", queue="alice", ids=[1]))["acked"] == 1


# --- ack and nack -----------------------------------------------------------


async def test_ack(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=["a", "b", "c"])
    await alice.ok("pull", channel="c", max=2)
    reply = await alice.ok("ack", channel="c", ids=[1, 3, 99])
    assert set(reply) == {"ok", "acked", "unknown"}
    assert reply["acked"] == 1 and sorted(reply["unknown"]) == [3, 99]
    assert await alice.ok("ack", channel="c", queue="alice", ids=[1]) == {
        "ok": True,
        "acked": 0,
        "unknown": [1],
    }
    [queue] = (await alice.ok("queue.list", channel="c"))["queues"]
    assert queue["depth"] == 1 and queue["inflight"] == 1
    assert (await alice.ok("ack", channel="c", ids=[2]))["acked"] == 1
    [message] = (await alice.ok("pull", channel="c", max=10))["messages"]
    assert message["id"] == 3


async def test_nack_requeues_with_attempt_plus_one(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=["a", "b", "c"])
    await alice.ok("pull", channel="c", max=2)
    reply = await alice.ok("nack", channel="c", ids=[2, 3, 42])
    assert set(reply) == {"ok", "requeued", "unknown"}
    assert reply["requeued"] == 1 and sorted(reply["unknown"]) == [3, 42]
    messages = (await alice.ok("pull", channel="c", max=10))["messages"]
    assert [(m["id"], m["attempt"]) for m in messages] == [(2, 2), (3, 1)]
    await alice.ok("nack", channel="c", ids=[2])
    [again] = (await alice.ok("pull", channel="c"))["messages"]
    assert (again["id"], again["attempt"]) == (2, 3)
    assert (await alice.ok("ack", channel="c", ids=[1, 2, 3]))["acked"] == 3
    await alice.ok("nack", channel="c", ids=[1])
    assert (await alice.ok("pull", channel="c"))["messages"] == []


async def test_acked_or_nacked_ids_are_unknown_afterwards(alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=[1, 2])
    await alice.ok("pull", channel="c", max=2)
    await alice.ok("nack", channel="c", ids=[2])
    assert await alice.ok("ack", channel="c", ids=[2]) == {"ok": True, "acked": 0, "unknown": [2]}
    assert await alice.ok("nack", channel="c", ids=[1]) == {
        "ok": True,
        "requeued": 1,
        "unknown": [],
    }


@pytest.mark.parametrize("op", ["ack", "nack"])
@pytest.mark.parametrize(
    ("ids", "field"), [([], "ids"), (list(range(1, 1002)), "ids"), ([1, "2"], "ids.1")], ids=repr
)
async def test_ack_nack_ids_bounds(alice: Wire, op: str, ids: list[Any], field: str) -> None:
    await channel_with_queue(alice)
    assert (await alice.error(op, "bad_request", channel="c", ids=ids))["field"] == field


@pytest.mark.parametrize("op", ["ack", "nack"])
async def test_ack_nack_1000_ids_accepted(alice: Wire, op: str) -> None:
    await channel_with_queue(alice)
    reply = await alice.ok(op, channel="c", ids=list(range(1, 1001)))
    assert sorted(reply["unknown"]) == list(range(1, 1001))


@pytest.mark.parametrize("op", ["ack", "nack"])
async def test_ack_nack_not_found_and_forbidden(
    admin: Wire, alice: Wire, bob: Wire, op: str
) -> None:
    await alice.error(op, "not_found", channel="nowhere", ids=[1])
    await channel_with_queue(alice)
    await alice.error(op, "not_found", channel="c", queue="other", ids=[1])
    await bob.error(op, "not_found", channel="c", ids=[1])
    await bob.error(op, "forbidden", channel="c", queue="alice", ids=[1])
    await admin.ok(op, channel="c", queue="alice", ids=[1])


async def test_any_connection_of_the_owner_may_ack(server: Server, alice: Wire) -> None:
    await channel_with_queue(alice)
    await alice.ok("publish", channel="c", messages=[1, 2])
    async with open_user_wire(server, "alice") as other:
        ids = [m["id"] for m in (await other.ok("pull", channel="c", max=2))["messages"]]
    # The pulling connection is gone; its messages stay in flight.
    assert (await alice.ok("pull", channel="c", max=10))["messages"] == []
    [queue] = (await alice.ok("queue.list", channel="c"))["queues"]
    assert queue["inflight"] == 2 and queue["depth"] == 0
    assert (await alice.ok("ack", channel="c", ids=ids))["acked"] == 2


# --- limits -----------------------------------------------------------------


async def test_max_queue_messages(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_queue_messages=3) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await wire.ok("channel.create", name="c")
        await wire.ok("subscribe", channel="c", queue="q1")
        await wire.ok("subscribe", channel="c", queue="q2")
        await wire.ok("publish", channel="c", messages=[1, 2])
        error = await wire.error("publish", "limit_exceeded", channel="c", messages=[3, 4])
        assert_limit(error, "max_queue_messages", 3)
        depths = [q["depth"] for q in (await wire.ok("queue.list", channel="c"))["queues"]]
        assert depths == [2, 2]
        await wire.ok("publish", channel="c", data=3)
        assert_limit(
            await wire.error("publish", "limit_exceeded", channel="c", data=4),
            "max_queue_messages",
            3,
        )
        # The limit counts messages until acked: one pulled from q1 still
        # counts; acked, it makes room there, but q2 is still full, so the
        # publish is refused whole.
        [first] = (await wire.ok("pull", channel="c", queue="q1"))["messages"]
        await wire.error("publish", "limit_exceeded", channel="c", data=4)
        await wire.ok("ack", channel="c", queue="q1", ids=[first["id"]])
        await wire.error("publish", "limit_exceeded", channel="c", data=4)
        depths = [q["depth"] for q in (await wire.ok("queue.list", channel="c"))["queues"]]
        assert depths == [2, 3]
        [first] = (await wire.ok("pull", channel="c", queue="q2"))["messages"]
        await wire.ok("ack", channel="c", queue="q2", ids=[first["id"]])
        await wire.ok("publish", channel="c", data=4)
        pulled = (await wire.ok("pull", channel="c", queue="q2", max=10))["messages"]
        assert [m["data"] for m in pulled] == [2, 3, 4]


async def test_max_queue_bytes(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_queue_bytes=100) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await channel_with_queue(wire)
        error = await wire.error("publish", "limit_exceeded", channel="c", data="x" * 200)
        assert_limit(error, "max_queue_bytes", 100)
        await wire.ok("publish", channel="c", data="small")
        error = await wire.error("publish", "limit_exceeded", channel="c", messages=["y" * 40] * 3)
        assert_limit(error, "max_queue_bytes", 100)
        [message] = (await wire.ok("pull", channel="c", max=10))["messages"]
        assert message["data"] == "small"


async def test_max_inflight(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_inflight=2) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await channel_with_queue(wire)
        await wire.ok("publish", channel="c", messages=[1, 2, 3, 4, 5])
        assert len((await wire.ok("pull", channel="c", max=5))["messages"]) == 2
        assert (await wire.ok("pull", channel="c", max=5))["messages"] == []
        await wire.ok("ack", channel="c", ids=[1])
        [message] = (await wire.ok("pull", channel="c", max=5))["messages"]
        assert message["id"] == 3


async def test_max_channels(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_channels=2) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await wire.ok("channel.create", name="c1")
        await wire.ok("channel.create", name="c2")
        error = await wire.error("channel.create", "limit_exceeded", name="c3")
        assert_limit(error, "max_channels", 2)
        await wire.ok("channel.delete", name="c1")
        await wire.ok("channel.create", name="c3")


async def test_max_queues_per_channel(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_queues_per_channel=1) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        # The channels' owner (an admin too) is not held by it: a user is.
        await admin.ok("channel.create", name="c")
        await admin.ok("channel.create", name="d")
        await create_user(admin, "alice")
        async with open_user_wire(srv, "alice") as wire:
            await wire.ok("subscribe", channel="c", queue="q1")
            error = await wire.error("subscribe", "limit_exceeded", channel="c", queue="q2")
            assert_limit(error, "max_queues_per_channel", 1)
            # Subscribing again creates nothing; another channel has its own count.
            assert (await wire.ok("subscribe", channel="c", queue="q1"))["created"] is False
            await wire.ok("subscribe", channel="d", queue="q2")


async def test_max_users(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_users=2) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await create_user(wire, "alice")
        error = await wire.error("user.create", "limit_exceeded", name="bob", password="p" * 8)
        assert_limit(error, "max_users", 2)
        await wire.error("user.get", "not_found", name="bob")
        await wire.ok("user.delete", name="alice")
        await create_user(wire, "bob")


async def test_max_connections_per_user(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_connections_per_user=1) as srv,
        open_user_wire(srv, "admin") as admin,
    ):
        await create_user(admin, "alice")
        async with open_user_wire(srv, "alice") as first, open_wire(srv) as second:
            error = await second.error("auth", "limit_exceeded", token=srv.mint_token("alice"))
            assert_limit(error, "max_connections_per_user", 1)
            error = await second.error(
                "login", "limit_exceeded", user="alice", password=USER_PASSWORD
            )
            assert_limit(error, "max_connections_per_user", 1)
            await second.error("whoami", "unauthenticated")
            # Authenticating the same connection again does not count twice.
            await first.ok("auth", token=srv.mint_token("alice"))
            await create_user(admin, "bob")
            assert (await second.ok("auth", token=srv.mint_token("bob")))["user"] == "bob"
            # Admins are exempt: an operator gets in whatever a user's clients hold.
            async with open_user_wire(srv, "admin") as again:
                await again.ok("whoami")


@pytest.mark.over_tls
async def test_max_connections(tmp_path: Path) -> None:
    # Both authenticated: none can be shed to make room (test_connection_limits.py).
    async with (
        running_server(tmp_path / "data", max_connections=2) as srv,
        open_user_wire(srv, "admin"),
        open_user_wire(srv, "admin"),
    ):
        reader, writer = await open_raw(srv.host, srv.port)
        third = Wire(reader, writer)
        try:
            bye = await third.recv()
            assert bye["event"] == "bye", bye
            assert set(bye) == {"event", "error"}
            assert_limit(bye["error"], "max_connections", 2)
            assert isinstance(bye["error"]["message"], str)
            assert await third.rest() == b""
        finally:
            await third.close()


async def test_max_batch_setting(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_batch=5) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await channel_with_queue(wire)
        error = await wire.error("publish", "bad_request", channel="c", messages=[1] * 6)
        assert error["field"] == "messages"
        await wire.ok("publish", channel="c", messages=[1] * 5)
        assert (await wire.error("pull", "bad_request", channel="c", max=6))["field"] == "max"
        assert len((await wire.ok("pull", channel="c", max=5))["messages"]) == 5
        error = await wire.error("ack", "bad_request", channel="c", ids=[1, 2, 3, 4, 5, 6])
        assert error["field"] == "ids"
        assert (await wire.ok("ack", channel="c", ids=[1, 2, 3, 4, 5]))["acked"] == 5


async def test_max_wait_and_ack_timeout_settings(tmp_path: Path) -> None:
    async with (
        running_server(
            tmp_path / "data",
            max_wait=1,
            default_ack_timeout=5,
            min_ack_timeout=2,
            max_ack_timeout=10,
        ) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        queue = await channel_with_queue(wire)
        assert queue["ack_timeout"] == 5
        assert (await wire.error("pull", "bad_request", channel="c", wait=1.5))["field"] == "wait"
        for bad in (1.9, 10.5):
            error = await wire.error("subscribe", "bad_request", channel="c", ack_timeout=bad)
            assert error["field"] == "ack_timeout"
        await wire.ok("subscribe", channel="c", ack_timeout=2)
        await wire.ok("subscribe", channel="c", ack_timeout=10)


async def test_logins_beyond_max_concurrent_logins_wait_their_turn(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data", max_concurrent_logins=1) as srv:

        async def login() -> str:
            async with open_wire(srv) as wire:
                reply = await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
                return str(reply["user"])

        assert await asyncio.gather(*(login() for _ in range(4))) == ["admin"] * 4


@pytest.mark.over_tls
async def test_pull_reply_is_capped_at_the_frame_size(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "data", max_frame_bytes=1024) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        await channel_with_queue(wire)
        for _ in range(5):
            await wire.ok("publish", channel="c", data="m" * 300)
        seen: list[int] = []
        while len(seen) < 5:
            await wire.send("pull", channel="c", max=5)
            line = await wire.recv_line()
            assert len(line.rstrip(b"\n")) <= 1024
            messages = orjson.loads(line)["messages"]
            assert 1 <= len(messages) < 5
            seen.extend(m["id"] for m in messages)
        assert seen == [1, 2, 3, 4, 5]
        # A message too big for a reply of its own, as stored, is refused.
        error = await wire.error("publish", "limit_exceeded", channel="c", data="b" * 960)
        assert_limit(error, "max_frame_bytes", 1024)
        # The largest one taken still comes in a reply within the frame.
        big = "b" * (1024 - 280 - 90)
        await wire.ok("publish", channel="c", data=big)
        await wire.send("pull", channel="c", max=5)
        line = await wire.recv_line()
        assert len(line.rstrip(b"\n")) <= 1024
        [message] = orjson.loads(line)["messages"]
        assert message["data"] == big


@pytest.mark.over_tls
async def test_auth_timeout(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data", auth_timeout=0.3) as srv:
        async with open_wire(srv) as idle:
            bye = await idle.recv()
            assert bye["event"] == "bye"
            expect_error({"ok": False, **bye}, "unauthenticated")
            assert await idle.rest() == b""
        async with open_user_wire(srv, "admin") as active:
            await channel_with_queue(active)
            # Outlive the auth timeout while authenticated.
            reply = await active.ok("pull", channel="c", wait=0.6)
            assert reply["messages"] == []
            assert (await active.ok("whoami"))["user"] == "admin"


@pytest.mark.over_tls
async def test_typing_keeps_an_unauthenticated_connection_open_up_to_a_limit(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "data", auth_timeout=0.4, max_auth_time=1.2) as srv,
        open_wire(srv) as typist,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A line every 0.1 s: well past auth_timeout, the connection stays open...
        while loop.time() - started < 0.8:
            assert await typist.call("ping") == {"ok": True}
            await asyncio.sleep(0.1)  # the pause between typed lines is the point here
        # ...until max_auth_time, however busy the typist.
        await typist.send("ping")
        while (line := await typist.recv()).get("event") != "bye":
            assert line == {"ok": True}
            await asyncio.sleep(0.1)
            with suppress(ConnectionError):  # the bye may be on its way
                await typist.send("ping")
        expect_error({"ok": False, **line}, "unauthenticated")


@pytest.mark.over_tls
async def test_shutdown_says_bye(tmp_path: Path) -> None:
    srv = Server(make_config(tmp_path / "data"), admin_password=ADMIN_PASSWORD)
    await srv.start()
    stopping: asyncio.Future[None] | None = None
    try:
        async with open_user_wire(srv, "admin") as authed, open_wire(srv) as idle:
            stopping = asyncio.ensure_future(srv.stop())
            for wire in (authed, idle):
                bye = await wire.recv()
                assert bye["event"] == "bye"
                assert set(bye) == {"event", "error"}
                expect_error({"ok": False, **bye}, "shutting_down")
                assert await wire.rest() == b""
            await asyncio.wait_for(stopping, 10)
    finally:
        await asyncio.wait_for(stopping if stopping is not None else srv.stop(), 10)
    # Stopped for good: nobody is listening any more.
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.close()


async def test_a_restart_keeps_everything_on_log_and_nothing_on_memory(
    tmp_path: Path, store: str
) -> None:
    async with running_server(tmp_path / "data") as srv, open_user_wire(srv, "admin") as wire:
        await create_user(wire, "alice")
        await wire.ok("channel.create", name="c")
        token = srv.mint_token("alice")
    async with running_server(tmp_path / "data") as srv, open_wire(srv) as wire:
        if store == "memory":
            # No disk at all: a new secret, no users but the first admin, no channels.
            await wire.error("auth", "auth_failed", token=token)
            await wire.error("login", "auth_failed", user="alice", password=USER_PASSWORD)
            await wire.ok("login", user="admin", password=ADMIN_PASSWORD)
            await wire.error("channel.get", "not_found", name="c")
            assert not (tmp_path / "data").exists()
            return
        assert (await wire.ok("auth", token=token))["user"] == "alice"
        await wire.ok("login", user="alice", password=USER_PASSWORD)
        assert (await wire.ok("channel.get", name="c"))["channel"]["owner"] == "admin"
