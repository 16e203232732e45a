"""Who sent a request: the identity a connection speaks for."""

from __future__ import annotations

import orjson

from .users import User


class Caller:
    """The user a connection speaks for (None until it authenticates)."""

    __slots__ = ("address", "conn_id", "is_admin", "name", "name_json", "peer", "user")

    def __init__(self, conn_id: int, peer: str, address: str = "") -> None:
        self.conn_id = conn_id
        self.peer = peer
        # The source the login limits count by (loginlimits.source_address).
        self.address = address
        self.user: User | None = None
        self.name = ""
        self.name_json = b""  # the name, JSON-encoded once for every publish
        self.is_admin = False

    def become(self, user: User) -> None:
        self.user = user
        self.name = user.name
        self.name_json = orjson.dumps(user.name)
        self.is_admin = user.role == "admin"
