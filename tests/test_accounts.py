"""Accounts: `user.passwd` and token revocation (`user.revoke_tokens`, `tokens_valid_after`).

Over a real socket on both backends; the CLI's `passwd` and `revoke-tokens`;
then the rules of revocation on their own. Tokens are minted with chosen
`iat` values through the server's own signer, so no test waits for the clock.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson
import pytest

from cli_helpers import Cli, Terminal, cli_env, login
from conftest import (
    USER_PASSWORD,
    Wire,
    create_user,
    open_user_wire,
    open_wire,
    running_server,
)
from tcpmq.server import Server
from tcpmq.users import User, encode_users, load_users, revocation_second

pytestmark = pytest.mark.every_store

NEW_PASSWORD = "a-new-passw0rd"


def token_issued_at(server: Server, name: str, iat: float) -> str:
    """A valid token of user `name` with the given `iat`."""
    user = server.app.users.get(name)
    return server.app.signer.mint(user.name, user.role, user.uid, 3600, now=iat)


async def auth_error(server: Server, token: str) -> str:
    async with open_wire(server) as wire:
        error = await wire.error("auth", "auth_failed", token=token)
        message: str = error["message"]
        return message


async def auth_ok(server: Server, token: str) -> str:
    async with open_wire(server) as wire:
        user: str = (await wire.ok("auth", token=token))["user"]
        return user


# --- user.passwd ---------------------------------------------------------------


async def test_a_user_changes_its_own_password(server: Server, alice: Wire, wire: Wire) -> None:
    old_token = server.mint_token("alice")
    before = time.time()
    reply = await alice.ok("user.passwd", password=NEW_PASSWORD)
    assert set(reply) == {"ok", "tokens_valid_after"}
    assert isinstance(reply["tokens_valid_after"], int)
    assert before < reply["tokens_valid_after"] <= time.time() + 1
    # The connection that changed it stays authenticated.
    assert (await alice.ok("whoami"))["user"] == "alice"
    await wire.error("login", "auth_failed", user="alice", password=USER_PASSWORD)
    assert await auth_error(server, old_token) == "token revoked"
    new_token = (await wire.ok("login", user="alice", password=NEW_PASSWORD))["token"]
    # A token issued just after the change works at once, even in the same second.
    assert await auth_ok(server, new_token) == "alice"


async def test_an_admin_changes_any_users_password(
    server: Server, admin: Wire, alice: Wire, wire: Wire
) -> None:
    old_token = server.mint_token("alice")
    await admin.ok("user.passwd", name="alice", password=NEW_PASSWORD)
    await wire.ok("login", user="alice", password=NEW_PASSWORD)
    assert await auth_error(server, old_token) == "token revoked"
    # The admin's own tokens are untouched.
    assert await auth_ok(server, server.mint_token("admin")) == "admin"
    # Naming oneself is the same as naming no one.
    await alice.ok("user.passwd", name="alice", password=USER_PASSWORD)
    await wire.ok("login", user="alice", password=USER_PASSWORD)


async def test_user_passwd_refusals(admin: Wire, alice: Wire, bob: Wire) -> None:
    await alice.error("user.passwd", "forbidden", name="bob", password=NEW_PASSWORD)
    await alice.error("user.passwd", "forbidden", name="admin", password=NEW_PASSWORD)
    await admin.error("user.passwd", "not_found", name="nobody", password=NEW_PASSWORD)
    error = await alice.error("user.passwd", "bad_request", password="short")
    assert (error["field"], error["min"]) == ("password", 8)
    error = await alice.error("user.passwd", "bad_request", password="x" * 1025)
    assert (error["field"], error["max"]) == ("password", 1024)
    assert (await alice.error("user.passwd", "bad_request"))["field"] == "password"
    error = await alice.error("user.passwd", "bad_request", name="a b", password=NEW_PASSWORD)
    assert error["field"] == "name"


async def test_user_passwd_needs_authentication(wire: Wire) -> None:
    await wire.error("user.passwd", "unauthenticated", password=NEW_PASSWORD)
    await wire.error("user.revoke_tokens", "unauthenticated")


# --- user.revoke_tokens ----------------------------------------------------------


async def test_revoking_ones_own_tokens(server: Server, alice: Wire, wire: Wire) -> None:
    old_token = server.mint_token("alice")
    reply = await alice.ok("user.revoke_tokens")
    assert set(reply) == {"ok", "tokens_valid_after"}
    valid_after = reply["tokens_valid_after"]
    assert await auth_error(server, old_token) == "token revoked"
    assert (await alice.ok("whoami"))["user"] == "alice"
    # The password still works, and the token it gives works at once.
    fresh = await wire.ok("login", user="alice", password=USER_PASSWORD)
    assert await auth_ok(server, fresh["token"]) == "alice"
    claims = orjson.loads(_payload(fresh["token"]))
    assert claims["iat"] >= valid_after
    assert fresh["expires_at"] == claims["exp"]


async def test_revocation_is_to_the_second(server: Server, alice: Wire) -> None:
    valid_after = (await alice.ok("user.revoke_tokens"))["tokens_valid_after"]
    # Issued in the second before: refused, whatever the fraction; from it on: accepted.
    assert await auth_error(server, token_issued_at(server, "alice", valid_after - 1)) == (
        "token revoked"
    )
    assert (
        await auth_error(server, token_issued_at(server, "alice", valid_after - 0.001))
        == "token revoked"
    )
    assert await auth_ok(server, token_issued_at(server, "alice", valid_after)) == "alice"


async def test_an_admin_revokes_any_users_tokens(server: Server, admin: Wire, bob: Wire) -> None:
    await create_user(admin, "alice")
    alice_token, bob_token = server.mint_token("alice"), server.mint_token("bob")
    await admin.ok("user.revoke_tokens", name="alice")
    assert await auth_error(server, alice_token) == "token revoked"
    assert await auth_ok(server, bob_token) == "bob"
    await bob.error("user.revoke_tokens", "forbidden", name="alice")
    await admin.error("user.revoke_tokens", "not_found", name="nobody")
    assert (await admin.error("user.revoke_tokens", "bad_request", name=""))["field"] == "name"


async def test_revocation_never_moves_back(alice: Wire) -> None:
    first = (await alice.ok("user.revoke_tokens"))["tokens_valid_after"]
    second = (await alice.ok("user.revoke_tokens"))["tokens_valid_after"]
    assert second >= first


async def test_a_second_revocation_within_a_second_refuses_the_tokens_between(
    server: Server, alice: Wire
) -> None:
    # Tokens minted right after a revocation carry its second as their iat,
    # ahead of the clock; a revocation within that second must refuse them too.
    await alice.ok("user.revoke_tokens")
    between = server.mint_token("alice")
    await alice.ok("user.revoke_tokens")
    assert await auth_error(server, between) == "token revoked"
    assert await auth_ok(server, server.mint_token("alice")) == "alice"


async def test_a_token_issued_in_the_future_is_refused(server: Server, alice: Wire) -> None:
    # One second ahead is what a token issued right after a revocation may have.
    assert await auth_ok(server, token_issued_at(server, "alice", time.time() + 0.5)) == "alice"
    far = token_issued_at(server, "alice", time.time() + 60)
    assert await auth_error(server, far) == "invalid token"


async def test_revocation_survives_a_restart(tmp_path: Path, store: str) -> None:
    async with running_server(tmp_path / "data") as srv, open_user_wire(srv, "admin") as wire:
        await create_user(wire, "alice")
        await wire.ok("user.passwd", name="alice", password=NEW_PASSWORD)
        old = token_issued_at(srv, "alice", time.time() - 5)
        valid_after = srv.app.users.get("alice").tokens_valid_after
    if store == "memory":
        return  # users live in the process only
    if store == "log":  # (the redis store keeps them in Redis)
        document = orjson.loads((tmp_path / "data" / "users.json").read_bytes())
        assert document["version"] == 2
        valid = {u["name"]: u["tokens_valid_after"] for u in document["users"]}
        assert valid["alice"] == valid_after
    async with running_server(tmp_path / "data") as srv, open_wire(srv) as wire:
        assert await auth_error(srv, old) == "token revoked"
        await wire.error("login", "auth_failed", user="alice", password=USER_PASSWORD)
        await wire.ok("login", user="alice", password=NEW_PASSWORD)


# --- the CLI ---------------------------------------------------------------------


async def test_cli_passwd_for_another_user_and_revoke_tokens(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await cli.ok("user", "add", "alice", "--password-stdin", stdin=USER_PASSWORD.encode())
        result = await cli.ok("passwd", "alice", "--password-stdin", stdin=b"alice-passw0rd-2\n")
        assert result.out.startswith("changed the password of 'alice'")
        await login(cli, "alice", "alice-passw0rd-2")
        assert (await cli.run("whoami")).out.startswith("alice (user)")
        result = await cli.run("revoke-tokens", "--json")
        assert result.code == 0, result
        document = orjson.loads(result.out)
        assert document["user"] == "alice" and isinstance(document["tokens_valid_after"], int)
        # The stored login was among the revoked tokens.
        result = await cli.run("whoami")
        assert result.code == 4 and "token revoked" in result.err, result
        await cli.fails(6, "revoke-tokens", "admin", env={"TCPMQ_TOKEN": _alice(cli)})


def _alice(cli: Cli) -> str:
    """A token of alice that works after her revocation."""
    return token_issued_at(
        cli.server, "alice", cli.server.app.users.get("alice").tokens_valid_after
    )


async def test_cli_passwd_of_ones_own_renews_the_stored_login(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await cli.ok("user", "add", "alice", "--password-stdin", stdin=USER_PASSWORD.encode())
        await login(cli, "alice", USER_PASSWORD)
        result = await cli.run("passwd", "--password-stdin", stdin=NEW_PASSWORD.encode())
        assert result.code == 0, result
        assert "renewed the stored login" in result.out
        # The stored token is the new login's: later commands keep working.
        assert (await cli.run("whoami")).code == 0
        await login(cli, "alice", NEW_PASSWORD)


async def test_cli_passwd_asks_twice_on_a_terminal(tmp_path: Path) -> None:
    async with cli_env(tmp_path) as cli:
        await cli.ok("user", "add", "alice", "--password-stdin", stdin=USER_PASSWORD.encode())
        terminal = await Terminal.spawn(cli, "passwd", "alice", env=cli.as_admin())
        try:
            await terminal.expect("New password for alice: ")
            terminal.type(NEW_PASSWORD + "\r")
            await terminal.expect("Again: ")
            terminal.type(NEW_PASSWORD + "\r")
            await terminal.expect("changed the password of 'alice'")
            assert await terminal.wait() == 0
            assert NEW_PASSWORD not in terminal.output
        finally:
            await terminal.close()
        await login(cli, "alice", NEW_PASSWORD)
        terminal = await Terminal.spawn(cli, "passwd", "alice", env=cli.as_admin())
        try:
            await terminal.expect("New password for alice: ")
            terminal.type(NEW_PASSWORD + "\r")
            await terminal.expect("Again: ")
            terminal.type("something-else\r")
            await terminal.expect("the passwords differ")
            assert await terminal.wait() == 1
        finally:
            await terminal.close()


# --- the rules on their own ------------------------------------------------------


def _payload(token: str) -> bytes:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.parametrize(
    ("now", "second"), [(1000.0, 1001), (1000.001, 1001), (1000.999, 1001), (1001.0, 1002)]
)
def test_revocation_second_is_past_every_token_issued_so_far(now: float, second: int) -> None:
    assert revocation_second(now) == second
    # Every token issued up to `now` has an `iat` of int(now) or less.
    assert int(now) < second


def test_tokens_issued_after_a_revocation_are_not_before_it() -> None:
    user = User("alice", "user", "u1", "hash", 0.0, tokens_valid_after=1001)
    assert user.token_issued_at(1000.5) == 1001
    assert user.token_issued_at(1001.5) == 1001
    assert user.token_issued_at(2000.0) == 2000
    assert User("bob", "user", "u2", "hash", 0.0).token_issued_at(1000.5) == 1000


def test_a_version_1_users_file_reads_as_never_revoked(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_bytes(
        orjson.dumps(
            {
                "version": 1,
                "users": [
                    {
                        "name": "admin",
                        "role": "admin",
                        "uid": "u1",
                        "password_hash": "hash",
                        "created_at": 1.0,
                    }
                ],
            }
        )
    )
    [user] = load_users(path).values()
    assert user.tokens_valid_after == 0
    path.write_bytes(encode_users({"admin": user}))
    assert load_users(path) == {"admin": user}
