"""Tokens signed with the server's own key but carrying odd claims, and the catch-all reply.

A token whose signature is right is still refused unless every claim is of
the type and range the server mints: each odd one gets `auth_failed` naming
the claim, and the connection goes on. Then: an exception while answering
(here a reply orjson cannot encode) is an `internal` reply with a logged
traceback, never a dead connection.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from conftest import ADMIN_PASSWORD, Wire, create_user, open_user_wire, open_wire, running_server
from tcpmq.auth import MAX_EPOCH
from tcpmq.server import Server

NOW = int(time.time())
# Values no time claim may hold: strings, fractions, numbers beyond any
# 64-bit integer, NaN, booleans, negatives, JSON's other types.
BAD_TIMES: list[Any] = [
    str(NOW + 3600),
    "soon",
    float(NOW + 3600),
    1e30,
    2**64,
    2**70,
    10**400,
    math.nan,
    math.inf,
    True,
    False,
    -1,
    MAX_EPOCH + 1,
    [NOW],
    {"at": NOW},
]


def signed(server: Server, **changes: Any) -> str:
    """A token for alice signed with the server's key, its claims changed by `changes`
    (a value of None drops the claim)."""
    alice = server.app.users.get("alice")
    claims: dict[str, Any] = {
        "sub": "alice",
        "role": "user",
        "uid": alice.uid,
        "iat": NOW,
        "exp": NOW + 3600,
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, server.app.users.secret, algorithm="HS256")


async def refused(wire: Wire, token: str) -> str:
    """Assert `auth` with `token` fails with auth_failed and the connection lives on."""
    error = await wire.error("auth", "auth_failed", token=token)
    await wire.ok("ping")
    return str(error["message"])


async def test_the_control_token_is_accepted(server: Server, admin: Wire) -> None:
    await create_user(admin, "alice")
    async with open_wire(server) as wire:
        assert (await wire.ok("auth", token=signed(server)))["expires_at"] == NOW + 3600


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_time_claims_must_be_integer_epoch_seconds(
    server: Server, admin: Wire, claim: str
) -> None:
    await create_user(admin, "alice")
    async with open_wire(server) as wire:
        for value in BAD_TIMES:
            message = await refused(wire, signed(server, **{claim: value}))
            assert message == (
                f"invalid token: claim {claim!r} must be an integer epoch second "
                f"from 0 to {MAX_EPOCH}"
            ), value


async def test_expiry_and_not_before(server: Server, admin: Wire) -> None:
    await create_user(admin, "alice")
    async with open_wire(server) as wire:
        assert await refused(wire, signed(server, exp=NOW - 1)) == "token expired"
        assert await refused(wire, signed(server, exp=0)) == "token expired"
        assert await refused(wire, signed(server, nbf=NOW + 3000)) == "token not valid yet (nbf)"
        await wire.ok("auth", token=signed(server, nbf=NOW - 10))


@pytest.mark.parametrize("claim", ["sub", "uid", "role"])
async def test_names_must_be_strings(server: Server, admin: Wire, claim: str) -> None:
    await create_user(admin, "alice")
    async with open_wire(server) as wire:
        for value in (5, 2**64, True, ["alice"], {"name": "alice"}, 1.5):
            message = await refused(wire, signed(server, **{claim: value}))
            assert message == f"invalid token: claim {claim!r} must be a string", value


@pytest.mark.parametrize("claim", ["sub", "uid", "iat", "exp"])
async def test_a_missing_claim_is_named(server: Server, admin: Wire, claim: str) -> None:
    await create_user(admin, "alice")
    async with open_wire(server) as wire:
        assert await refused(wire, signed(server, **{claim: None})) == (
            f"invalid token: no {claim!r} claim"
        )


async def test_a_reply_that_cannot_be_encoded_is_answered_internal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No client input makes a reply orjson refuses (the token claims above
    # were the last); an operator's limit beyond 64 bits still does: every
    # limit is echoed by server.info. The catch-all must answer it.
    async with (
        running_server(tmp_path / "data", max_users=2**64) as srv,
        open_user_wire(srv, "admin") as wire,
    ):
        with caplog.at_level(logging.ERROR, logger="tcpmq"):
            reply = await wire.call("server.info", id=7)
        assert reply == {
            "ok": False,
            "id": 7,
            "error": {"code": "internal", "message": "internal server error"},
        }
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert record.exc_info is not None  # the traceback is logged
        assert "Integer exceeds 64-bit range" in str(record.exc_info[1])
        # The connection goes on.
        await wire.ok("ping", id=8)
        assert (await wire.ok("whoami"))["user"] == "admin"


async def test_a_late_reply_that_cannot_be_encoded_is_answered_internal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The same through a reply that comes later, from the password pool: a
    # token lifetime beyond 64 bits makes an `expires_at` orjson refuses.
    async with (
        running_server(tmp_path / "data", default_token_ttl=2**64, max_token_ttl=2**64) as srv,
        open_wire(srv) as wire,
    ):
        with caplog.at_level(logging.ERROR, logger="tcpmq"):
            reply = await wire.call("login", id=1, user="admin", password=ADMIN_PASSWORD)
        assert reply["error"] == {"code": "internal", "message": "internal server error"}
        assert reply["id"] == 1
        assert any(r.exc_info is not None for r in caplog.records if r.levelno == logging.ERROR)
        await wire.ok("ping", id=2)
