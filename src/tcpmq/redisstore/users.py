"""The user directory on a shared Redis: every node of a store sees the same users.

Reads answer from a copy in the process, as the file directory's do; users are
few and change rarely, so each node keeps them all. A change runs one Lua
script that checks the rule and writes in one step (two nodes creating users
at once never pass `max_users`, two deleting admins never remove the last),
bumps a version counter and publishes it; the node then updates its copy.
Other nodes reload the whole table when told, when their subscription is
(re)made (messages sent meanwhile are lost) and every `RELOAD_INTERVAL`
anyway, so a lost message costs at most that delay.

Keys (one hash tag, so one Cluster slot holds them all):
`P{users}` name -> the JSON record of `User` (as in users.json),
`P{users}:v` the version, `P{users}:changed` the pub/sub channel.

The token secret never goes to Redis: each node reads it from its own config
(one secret file for all nodes). `P{meta}` keeps an HMAC of it, so a node
with another secret refuses to start instead of refusing every token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, replace
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from ..errors import AlreadyExists, Forbidden, LimitExceeded, NotFound, StorageFull, Unavailable
from ..users import User

log = logging.getLogger(__name__)

#: Seconds between reloads when no change is announced: bounds the staleness a lost
#: pub/sub message (a reconnect, a failover) can cause.
RELOAD_INTERVAL = 30.0
# Waits after a failed reload or subscription, doubling up to the second.
_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0
# A set_password or revoke_tokens computed on a record changed meanwhile is
# computed again on the new one; a user changed this often is left alone.
_UPDATE_ATTEMPTS = 8
_SECRET_CHECK = b"tcpmq-secret-check"

# Every script: KEYS = users hash, version; ARGV[1] = the channel to announce on.
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return {'exists'} end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {'limit'} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], version)
return {'ok', version}
"""  # ARGV: channel, name, record, max_users

_DELETE = """
local record = redis.call('HGET', KEYS[1], ARGV[2])
if not record then return {'not_found'} end
if cjson.decode(record)['role'] == 'admin' then
  local admins = 0
  for _, other in ipairs(redis.call('HVALS', KEYS[1])) do
    if cjson.decode(other)['role'] == 'admin' then admins = admins + 1 end
  end
  if admins < 2 then return {'last_admin'} end
end
redis.call('HDEL', KEYS[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], version)
return {'ok', version, record}
"""  # ARGV: channel, name

# Records are rewritten only from the exact record the change was computed on:
# Lua's cjson would round `created_at` to 14 digits, so Python encodes them.
_UPDATE = """
local record = redis.call('HGET', KEYS[1], ARGV[2])
if not record then return {'not_found'} end
if record ~= ARGV[3] then return {'changed', record} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], version)
return {'ok', version}
"""  # ARGV: channel, name, the record seen, the new record

_LOAD = """
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""

# A script's reply: a status string first, then what the status carries.
_Reply = list[Any]

# What means "the store cannot be reached or take writes now".
_UNREACHABLE: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,  # refused, reset, auth, still loading
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,  # MASTERDOWN too
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.SlotNotCoveredError,
)


@contextmanager
def _store_errors() -> Iterator[None]:
    """Redis's errors as the broker's: `Unavailable`, or `StorageFull` when out of memory."""
    try:
        yield
    except redis_errors.OutOfMemoryError as exc:
        # Redis refuses a script at its first write: nothing changed.
        raise StorageFull(f"the store is out of memory ({exc}); nothing changed") from exc
    except _UNREACHABLE as exc:
        raise Unavailable(f"the user store cannot be reached ({exc})") from exc


def secret_check(secret: bytes) -> str:
    """What `{meta}` keeps of the secret: enough to compare, nothing to sign with."""
    return hmac.new(secret, _SECRET_CHECK, hashlib.sha256).hexdigest()


def _text(value: bytes | str) -> str:
    # The client may or may not decode replies (`decode_responses`).
    return value.decode() if isinstance(value, bytes) else value


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]


def _encode(user: User) -> bytes:
    return orjson.dumps(asdict(user))


def _decode(record: bytes | str) -> User:
    return User(**orjson.loads(record))


class RedisUserDirectory:
    """`users.UserDirectory` on a shared Redis (see the module docstring). Use `open`."""

    def __init__(
        self, client: Redis | RedisCluster, prefix: str, secret: bytes, max_users: int
    ) -> None:
        self.max_users = max_users
        self._client = client
        self._secret = secret
        self._users_key = f"{prefix}{{users}}"
        self._keys = [self._users_key, f"{self._users_key}:v"]
        self._channel = f"{self._users_key}:changed"
        self._meta_key = f"{prefix}{{meta}}"
        self._create = client.register_script(_CREATE)
        self._delete = client.register_script(_DELETE)
        self._update = client.register_script(_UPDATE)
        self._load = client.register_script(_LOAD)
        self._users: dict[str, User] = {}
        self._version = 0
        # Changes of this node, counted: a reload that saw this move is not taken.
        self._own_changes = 0
        # Set when a version is taken into the copy, then replaced by a fresh one.
        self._new_version = asyncio.Event()
        # Set when the copy may be behind the store.
        self._stale = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def open(
        cls, client: Redis | RedisCluster, prefix: str, secret: bytes, max_users: int
    ) -> RedisUserDirectory:
        """Check the secret, subscribe to changes, load the users.

        Raises:
            ValueError: the store was set up with another secret.
            Unavailable: Redis cannot be reached.
        """
        directory = cls(client, prefix, secret, max_users)
        await directory._check_secret()
        # Subscribed before loading: a change made in between is announced, not lost.
        pubsub = await directory._subscribe()
        try:
            await directory.reload()
        except BaseException:
            await _close(pubsub)
            raise
        directory._tasks = [
            asyncio.create_task(directory._listen(pubsub), name="users-listen"),
            asyncio.create_task(directory._reload_when_stale(), name="users-reload"),
        ]
        return directory

    async def close(self) -> None:
        self._closed = True
        # Cancelled until done: on Python 3.11 a cancel can be lost inside redis-py
        # (its sends use asyncio.wait_for, which drops a cancel arriving as the send
        # completes), so the loops also stop at their next turn once closed.
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_RETRY_FIRST)
        self._tasks = []

    # --- reads: from the copy ---------------------------------------------------

    @property
    def secret(self) -> bytes:
        return self._secret

    @property
    def empty(self) -> bool:
        return not self._users

    def find(self, name: str) -> User | None:
        return self._users.get(name)

    def get(self, name: str) -> User:
        try:
            return self._users[name]
        except KeyError:
            raise NotFound(f"user {name!r} does not exist") from None

    def list(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    @property
    def version(self) -> int:
        """The store's version the copy reflects (it counts changes)."""
        return self._version

    async def until_version(self, version: int) -> None:
        """Return once the copy reflects `version` or a later one (for tests, and a
        node that must see another's change)."""
        while self._version < version:
            await self._new_version.wait()

    # --- changes: one script each -------------------------------------------------

    async def create(self, name: str, role: str, password_hash: str, created_at: float) -> User:
        user = User(name, role, secrets.token_hex(8), password_hash, created_at)
        reply = await self._run(self._create, name, _encode(user), self.max_users)
        status = _text(reply[0])
        if status == "exists":
            raise AlreadyExists(f"user {name!r} already exists")
        if status == "limit":
            raise LimitExceeded("too many users", limit="max_users", maximum=self.max_users)
        await self._applied(int(reply[1]), lambda users: {**users, name: user})
        return user

    async def delete(self, name: str) -> User:
        reply = await self._run(self._delete, name)
        status = _text(reply[0])
        if status == "not_found":
            raise NotFound(f"user {name!r} does not exist")
        if status == "last_admin":
            raise Forbidden("cannot delete the last admin")
        await self._applied(
            int(reply[1]), lambda users: {k: v for k, v in users.items() if k != name}
        )
        return _decode(reply[2])

    async def set_password(self, name: str, password_hash: str, tokens_valid_after: int) -> User:
        # Past every token issued so far, those minted at the last revocation's
        # second (ahead of the clock) included: never moved back.
        return await self._change_user(
            name,
            lambda user: replace(
                user,
                password_hash=password_hash,
                tokens_valid_after=max(user.tokens_valid_after + 1, tokens_valid_after),
            ),
        )

    async def revoke_tokens(self, name: str, tokens_valid_after: int) -> User:
        return await self._change_user(
            name,
            lambda user: replace(
                user, tokens_valid_after=max(user.tokens_valid_after + 1, tokens_valid_after)
            ),
        )

    async def _change_user(self, name: str, change: Callable[[User], User]) -> User:
        """Apply `change` to the stored record: compare and set, again on a newer record."""
        cached = self.find(name)
        seen: bytes | str = _encode(cached) if cached is not None else b""
        for _ in range(_UPDATE_ATTEMPTS):
            user = change(_decode(seen)) if seen else None
            reply = await self._run(self._update, name, seen, _encode(user) if user else b"")
            status = _text(reply[0])
            if status == "not_found":
                raise NotFound(f"user {name!r} does not exist")
            if status == "ok":
                break
            seen = reply[1]  # "changed": the record as it is now
        else:
            raise Unavailable(f"user {name!r} changed at every attempt; try again")
        assert user is not None  # "ok" needs the record seen to exist
        stored = user
        await self._applied(int(reply[1]), lambda users: {**users, name: stored})
        return stored

    async def _run(self, script: AsyncScript, *args: Any) -> _Reply:
        with _store_errors():
            reply: _Reply = await script(keys=self._keys, args=[self._channel, *args])
        return reply

    async def _applied(
        self, version: int, change: Callable[[dict[str, User]], dict[str, User]]
    ) -> None:
        """Bring the copy to `version`, which this node's change just made."""
        self._own_changes += 1  # a reload in flight may predate it: it will not be taken
        if self._version == version - 1:
            self._take(version, change(self._users))
            return
        # Changes from elsewhere came in between (or the store went back, having
        # lost writes): load it all, which has this change.
        with suppress(Unavailable):
            if await self.reload():
                return
        # The change is stored: show it here now, the rest at the next reload.
        self._users = change(self._users)
        self._stale.set()

    # --- the copy -----------------------------------------------------------------

    async def reload(self) -> bool:
        """Load every user (at one version) into the copy; False if a change of this
        node landed meanwhile (the load may predate it: the copy is marked stale).

        Raises: Unavailable.
        """
        own_changes = self._own_changes
        with _store_errors():
            version, fields = await self._load(keys=self._keys)
        if own_changes != self._own_changes:
            self._stale.set()
            return False
        users = {}
        for index in range(0, len(fields), 2):
            user = _decode(fields[index + 1])
            users[user.name] = user
        # Taken even if older than the copy: Redis may have lost writes (a restart
        # without fsync, a failover), and the copy follows the store.
        self._take(int(version), users)
        return True

    def _take(self, version: int, users: dict[str, User]) -> None:
        self._users = users
        self._version = version
        self._new_version.set()
        self._new_version = asyncio.Event()

    async def _check_secret(self) -> None:
        check = secret_check(self._secret)
        with _store_errors():
            # The first node to start sets it; everyone compares.
            await self._client.hsetnx(self._meta_key, "secret_check", check)
            stored = await self._client.hget(self._meta_key, "secret_check")
        if stored is None or not hmac.compare_digest(_text(stored), check):
            raise ValueError(
                "this store was set up with another secret: every node of a store must "
                "share one secret file"
            )

    async def _subscribe(self) -> PubSub:
        pubsub = self._client.pubsub()
        try:
            with _store_errors():
                await pubsub.subscribe(self._channel)
        except BaseException:
            await _close(pubsub)
            raise
        return pubsub

    async def _listen(self, pubsub: PubSub | None) -> None:
        """Mark the copy stale at every announced change and every (re)subscription."""
        retry = _RETRY_FIRST
        while not self._closed:
            if pubsub is None:
                try:
                    pubsub = await self._subscribe()
                except Exception as exc:
                    log.warning("user directory: cannot subscribe to changes (%s)", exc)
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue
            try:
                # redis-py subscribes again after a reconnect: that confirmation
                # arrives as a "subscribe" message, and changes may have been missed.
                async for message in pubsub.listen():
                    if message["type"] in ("message", "subscribe"):
                        self._stale.set()
                        retry = _RETRY_FIRST
            except Exception as exc:
                # Any failure, not only Redis's: without this task the copy goes stale.
                log.warning("user directory: change feed lost (%s); subscribing again", exc)
            finally:
                with suppress(Exception):
                    await _close(pubsub)
            pubsub = None
            await asyncio.sleep(retry)
            retry = min(retry * 2, _RETRY_MAX)

    async def _reload_when_stale(self) -> None:
        retry = _RETRY_FIRST
        while not self._closed:
            with suppress(TimeoutError):
                async with asyncio.timeout(RELOAD_INTERVAL):
                    await self._stale.wait()
            self._stale.clear()
            try:
                await self.reload()
                retry = _RETRY_FIRST
            except Unavailable as exc:
                log.warning("user directory: reload failed (%s); retrying", exc)
                self._stale.set()
                await asyncio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX)
