"""The user directory: users and the token-signing secret, behind one interface.

`UserDirectory` is what handlers see: reads answer at once from memory,
changes are coroutines that return once the change is stored (a later Redis
directory answers over the network). Two directories exist:

- `FileUserDirectory` keeps `users.json` and `secret` in the data directory.
  Users change rarely and are needed offline (`tcpmq token` mints a token
  without a running server), so they are one small JSON document, rewritten
  atomically with fsync on every change, readable by the owner only. The
  rewrite runs in a worker thread, never on the event loop, and changes take
  turns: each one is checked and written with the previous one finished.
- `MemoryUserDirectory` keeps them in the process (`--store memory`): a new
  random secret at every start, nothing on disk.

Each user has a random `uid`: tokens carry it, so a token dies with its user
even if a user of the same name is created later. `tokens_valid_after` is the
user's not-before time for tokens: `auth` refuses a token issued (`iat`)
earlier. Revoking the tokens (or changing the password) sets it to the next
whole second, since `iat` is whole seconds: a token issued before the revoke,
in the same second, has a lower `iat`; one issued after it gets that second
as its `iat` (see `User.token_issued_at`), at most a second ahead.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import orjson

from .auth import load_or_create_secret, write_private_file
from .errors import AlreadyExists, Forbidden, LimitExceeded, NotFound, StorageFull

USERS_FILE = "users.json"
# Version 2 added `tokens_valid_after`; a version 1 file reads as never revoked.
FORMAT_VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})
_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    uid: str
    password_hash: str
    created_at: float
    # Tokens issued (`iat`) before this epoch second are refused; 0: none is.
    tokens_valid_after: int = 0

    def info(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "created_at": self.created_at}

    def token_issued_at(self, now: float) -> int:
        """The `iat` of a token minted for this user at `now`: never before the revocation."""
        return max(int(now), self.tokens_valid_after)


def revocation_second(now: float) -> int:
    """`tokens_valid_after` for a revocation at `now`: the next whole second.

    Every token issued up to `now` has an `iat` of at most `int(now)`, or of
    the previous revocation's second, which the directory also moves past; so
    all of them are refused. Tokens issued from then on get the new second as
    their `iat` (`User.token_issued_at`), possibly ahead of the clock.
    """
    return math.floor(now) + 1


class UserDirectory(Protocol):
    """Users and the secret tokens are signed with."""

    @property
    def secret(self) -> bytes: ...

    @property
    def empty(self) -> bool:
        """No user exists yet: the first admin must be created."""

    def find(self, name: str) -> User | None: ...

    def get(self, name: str) -> User:
        """Raises: NotFound."""

    def list(self) -> list[User]:
        """Every user, sorted by name."""

    async def create(self, name: str, role: str, password_hash: str, created_at: float) -> User:
        """Store a new user; returns it once stored.

        Raises:
            AlreadyExists: a user of that name exists.
            LimitExceeded: `max_users` users exist.
            StorageFull: the directory could not be written (every change may
                raise it; nothing changed then).
        """

    async def delete(self, name: str) -> User:
        """Remove a user; returns it once the removal is stored.

        Raises:
            NotFound: no such user.
            Forbidden: it is the last admin.
        """

    async def set_password(self, name: str, password_hash: str, tokens_valid_after: int) -> User:
        """Replace a user's password hash and revoke its tokens issued before
        `tokens_valid_after` (never moved back); returns the user once stored.

        Raises:
            NotFound: no such user.
        """

    async def revoke_tokens(self, name: str, tokens_valid_after: int) -> User:
        """Refuse the user's tokens issued before `tokens_valid_after` (never
        moved back); returns the user once stored.

        Raises:
            NotFound: no such user.
        """


class _Users:
    """The in-memory table and the rules every directory applies to it."""

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self.users: dict[str, User] = {}
        # Changes take turns, so each is checked against the state it will change.
        self._turn = asyncio.Lock()

    @property
    def empty(self) -> bool:
        return not self.users

    def find(self, name: str) -> User | None:
        return self.users.get(name)

    def get(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise NotFound(f"user {name!r} does not exist") from None

    def list(self) -> list[User]:
        return sorted(self.users.values(), key=lambda u: u.name)

    async def create(self, name: str, role: str, password_hash: str, created_at: float) -> User:
        async with self._turn:
            if name in self.users:
                raise AlreadyExists(f"user {name!r} already exists")
            if len(self.users) >= self.max_users:
                raise LimitExceeded("too many users", limit="max_users", maximum=self.max_users)
            user = User(name, role, secrets.token_hex(8), password_hash, created_at)
            # Stored before it takes effect: a failed write changes nothing.
            after = {**self.users, name: user}
            await self._store(after)
            self.users = after
            return user

    async def delete(self, name: str) -> User:
        async with self._turn:
            user = self.get(name)
            admins = sum(u.role == "admin" for u in self.users.values())
            if user.role == "admin" and admins == 1:
                raise Forbidden("cannot delete the last admin")
            after = {k: v for k, v in self.users.items() if k != name}
            await self._store(after)
            self.users = after
            return user

    async def set_password(self, name: str, password_hash: str, tokens_valid_after: int) -> User:
        async with self._turn:
            user = self.get(name)
            # Past every token issued so far, those minted at the last
            # revocation's second (ahead of the clock) included.
            after = max(user.tokens_valid_after + 1, tokens_valid_after)
            return await self._replace(
                replace(user, password_hash=password_hash, tokens_valid_after=after)
            )

    async def revoke_tokens(self, name: str, tokens_valid_after: int) -> User:
        async with self._turn:
            user = self.get(name)
            # Past every token issued so far, those minted at the last
            # revocation's second (ahead of the clock) included.
            after = max(user.tokens_valid_after + 1, tokens_valid_after)
            return await self._replace(replace(user, tokens_valid_after=after))

    async def _replace(self, user: User) -> User:
        # With the turn held. Stored before it takes effect, as in create.
        after = {**self.users, user.name: user}
        await self._store(after)
        self.users = after
        return user

    async def _store(self, users: dict[str, User]) -> None:
        """Make `users` the stored state (nothing to do in memory)."""


class MemoryUserDirectory(_Users):
    """Users in the process only; everything is gone at restart."""

    def __init__(self, max_users: int) -> None:
        super().__init__(max_users)
        self.secret = secrets.token_bytes(_SECRET_BYTES)


class FileUserDirectory(_Users):
    """Users in `users.json` and the secret in `secret`, both in the data dir (mode 0600)."""

    def __init__(self, data_dir: Path, max_users: int) -> None:
        super().__init__(max_users)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = data_dir / USERS_FILE
        self.secret = load_or_create_secret(data_dir)
        if self.path.exists():
            self.users = load_users(self.path)

    async def _store(self, users: dict[str, User]) -> None:
        # The write fsyncs twice: a thread keeps that off the event loop.
        try:
            await asyncio.to_thread(write_private_file, self.path, encode_users(users))
        except OSError as exc:
            # A full disk, a quota, an I/O error: the old file is intact and
            # the change has not taken effect (the callers store first).
            raise StorageFull(
                f"the user directory could not be written ({exc.strerror or exc}); nothing changed"
            ) from exc


def load_users(path: Path) -> dict[str, User]:
    document = orjson.loads(path.read_bytes())
    if document.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: unsupported format version {document.get('version')!r}")
    return {entry["name"]: User(**entry) for entry in document["users"]}


def encode_users(users: dict[str, User]) -> bytes:
    document = {
        "version": FORMAT_VERSION,
        "users": [asdict(user) for user in sorted(users.values(), key=lambda u: u.name)],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)
