"""The connection registry: who is connected, as whom, and how to end them.

Admits connections up to `max_connections`, binds each authenticated one to
its user (at most `max_connections_per_user`), and ends a user's
connections when the user is deleted or all of them at shutdown. It holds
connections by a small protocol, so it knows nothing of how they work.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from .config import Limits
from .errors import AuthFailed, LimitExceeded, TcpmqError

if TYPE_CHECKING:
    from .caller import Caller
    from .users import User


class Endable(Protocol):
    caller: Caller

    def close(self, reason: TcpmqError | None) -> None:
        """Send the replies made, then `bye` with `reason`, then close."""

    def abort(self) -> None:
        """Drop the connection, sending nothing more."""


class Connections:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.open: set[Endable] = set()
        self._by_user: dict[str, set[Endable]] = {}
        self._by_caller: dict[Caller, Endable] = {}
        self._all_closed: asyncio.Event | None = None  # set while waiting for it

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, connection: Endable) -> bool:
        if len(self.open) >= self._limits.max_connections:
            return False
        self.open.add(connection)
        self._by_caller[connection.caller] = connection
        return True

    def authenticate(self, caller: Caller, user: User) -> None:
        """Make `user` the caller's identity.

        Raises:
            LimitExceeded: the user has `max_connections_per_user` connections.
        """
        connection = self._by_caller.get(caller)
        if connection is not None:
            bound = self._by_user.setdefault(user.name, set())
            maximum = self._limits.max_connections_per_user
            if connection not in bound and len(bound) >= maximum:
                raise LimitExceeded(
                    f"user {user.name!r} has too many connections",
                    limit="max_connections_per_user",
                    maximum=maximum,
                )
            if caller.user is not None and caller.name != user.name:
                self._unbind(connection, caller.name)
            bound.add(connection)
        caller.become(user)

    def _unbind(self, connection: Endable, name: str) -> None:
        bound = self._by_user.get(name)
        if bound is not None:
            bound.discard(connection)
            if not bound:
                del self._by_user[name]

    def forget(self, connection: Endable) -> None:
        self.open.discard(connection)
        self._by_caller.pop(connection.caller, None)
        if connection.caller.user is not None:
            self._unbind(connection, connection.caller.name)
        if not self.open and self._all_closed is not None:
            self._all_closed.set()

    def end_user(self, name: str) -> None:
        """Close the user's connections, after the current reply has gone out."""

        def end() -> None:
            for connection in list(self._by_user.get(name, ())):
                connection.close(AuthFailed(f"user {name!r} was deleted"))

        asyncio.get_running_loop().call_soon(end)

    def close_all(self, reason: TcpmqError) -> None:
        for connection in list(self.open):
            connection.close(reason)

    async def all_closed(self) -> None:
        """Return once every connection is gone."""
        if self.open:
            self._all_closed = asyncio.Event()
            await self._all_closed.wait()
