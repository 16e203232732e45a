"""The user directory, kept in `users.json` in the data directory.

Users change rarely and are needed offline (`tcpmq token` mints a token without
a running server), so they are stored as one small JSON document, rewritten
atomically with fsync on every change and readable by the owner only. Each
user has a random `uid`: tokens carry it, so a token dies with its user even if
a user of the same name is created later.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from .auth import write_private_file
from .errors import AlreadyExists, Forbidden, LimitExceeded, NotFound

USERS_FILE = "users.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    uid: str
    password_hash: str
    created_at: float

    def info(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "created_at": self.created_at}


class UserStore:
    def __init__(self, data_dir: Path, max_users: int) -> None:
        self.path = data_dir / USERS_FILE
        self.max_users = max_users
        self._users: dict[str, User] = {}

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> None:
        document = orjson.loads(self.path.read_bytes())
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: unsupported format version {document.get('version')!r}")
        self._users = {entry["name"]: User(**entry) for entry in document["users"]}

    def save(self) -> None:
        self._write(self._users)

    def _write(self, users: dict[str, User]) -> None:
        document = {
            "version": FORMAT_VERSION,
            "users": [asdict(user) for user in sorted(users.values(), key=lambda u: u.name)],
        }
        write_private_file(self.path, orjson.dumps(document, option=orjson.OPT_INDENT_2))

    def get(self, name: str) -> User:
        try:
            return self._users[name]
        except KeyError:
            raise NotFound(f"user {name!r} does not exist") from None

    def find(self, name: str) -> User | None:
        return self._users.get(name)

    def list(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    def create(self, name: str, role: str, password_hash: str, created_at: float) -> User:
        if name in self._users:
            raise AlreadyExists(f"user {name!r} already exists")
        if len(self._users) >= self.max_users:
            raise LimitExceeded("too many users", limit="max_users", maximum=self.max_users)
        user = User(name, role, secrets.token_hex(8), password_hash, created_at)
        # Written before it takes effect: a failed write changes nothing.
        self._write({**self._users, name: user})
        self._users[name] = user
        return user

    def delete(self, name: str) -> User:
        user = self.get(name)
        if user.role == "admin" and sum(u.role == "admin" for u in self._users.values()) == 1:
            raise Forbidden("cannot delete the last admin")
        remaining = {k: v for k, v in self._users.items() if k != name}
        self._write(remaining)
        self._users = remaining
        return user
