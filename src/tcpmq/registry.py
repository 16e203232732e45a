"""The connection registry: who is connected, as whom, and how to end them.

Admits connections up to `max_connections` in all and
`max_connections_per_address` from one source address, binds each
authenticated one to its user (at most `max_connections_per_user`, admins
exempt), and ends a user's connections when the user is deleted or all of
them at shutdown. It holds connections by a small protocol, so it knows
nothing of how they work.

Shedding: when the server is full, a new connection does not simply bounce.
The oldest connection that has not authenticated yet is closed to make room
(they are kept in arrival order), so a flood of idle sockets from many
addresses cannot lock out a client that authenticates promptly; only when
every connection is authenticated is the newcomer refused. The cap on one
address is never shed for: a flood from one address meets its own limit.

Unsent replies: a connection whose client stops reading holds up to
`write_buffer_high` (and then stops being read). Each one in that state is
counted as holding that much; beyond `max_buffered_bytes` in all, the one
that stopped reading first is closed, so readers that never read cannot add
up to more memory than that, whatever their number.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from .config import Limits
from .errors import AuthFailed, LimitExceeded, TcpmqError

if TYPE_CHECKING:
    from .caller import Caller
    from .users import User

log = logging.getLogger(__name__)


class Endable(Protocol):
    caller: Caller

    def close(self, reason: TcpmqError | None) -> None:
        """Send the replies made, then `bye` with `reason`, then close."""

    def fail(self, reason: TcpmqError) -> None:
        """Close at once with `bye`, dropping the replies not sent yet.

        How a connection is shed to make room: no lingering.
        """

    def abort(self) -> None:
        """Drop the connection, sending nothing more."""

    def use_limits(self, limits: Limits) -> None:
        """Check `limits` from now on (see reload.py for which ones may change)."""


class Connections:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.open: set[Endable] = set()
        self._by_user: dict[str, set[Endable]] = {}
        self._by_caller: dict[Caller, Endable] = {}
        self._by_address: dict[str, int] = {}
        self._address: dict[Endable, str] = {}
        # Not yet authenticated, oldest first (a dict keeps insertion order).
        self._unauthenticated: dict[Endable, None] = {}
        # Whose unsent replies reached write_buffer_high, the earliest first.
        self._backed_up: dict[Endable, None] = {}
        self._all_closed: asyncio.Event | None = None  # set while waiting for it

    def __len__(self) -> int:
        return len(self.open)

    def use_limits(self, limits: Limits) -> None:
        """Check `limits` from now on, here and in every open connection (a reload)."""
        self._limits = limits
        for connection in self.open:
            connection.use_limits(limits)

    def admit(self, connection: Endable, address: str) -> LimitExceeded | None:
        """Count a new connection from `address` in, or say which limit refuses it.

        At `max_connections` the oldest unauthenticated connection is closed
        to make room (see the module's docstring).
        """
        limits = self._limits
        from_address = self._by_address.get(address, 0)
        if from_address >= limits.max_connections_per_address:
            return LimitExceeded(
                f"too many connections from {address}",
                limit="max_connections_per_address",
                maximum=limits.max_connections_per_address,
            )
        if len(self.open) >= limits.max_connections:
            if not self._unauthenticated:
                return _too_many(limits.max_connections)
            oldest = next(iter(self._unauthenticated))
            self._forget(oldest)
            oldest.fail(_too_many(limits.max_connections))
        self.open.add(connection)
        self._by_caller[connection.caller] = connection
        self._by_address[address] = from_address + 1
        self._address[connection] = address
        self._unauthenticated[connection] = None
        return None

    def authenticate(self, caller: Caller, user: User) -> None:
        """Make `user` the caller's identity.

        Raises:
            LimitExceeded: the user has `max_connections_per_user` connections
                (admins are exempt).
        """
        connection = self._by_caller.get(caller)
        if connection is not None:
            bound = self._by_user.setdefault(user.name, set())
            maximum = self._limits.max_connections_per_user
            if connection not in bound and len(bound) >= maximum and user.role != "admin":
                raise LimitExceeded(
                    f"user {user.name!r} has too many connections",
                    limit="max_connections_per_user",
                    maximum=maximum,
                )
            if caller.user is not None and caller.name != user.name:
                self._unbind(connection, caller.name)
            bound.add(connection)
            self._unauthenticated.pop(connection, None)
        caller.become(user)

    def _unbind(self, connection: Endable, name: str) -> None:
        bound = self._by_user.get(name)
        if bound is not None:
            bound.discard(connection)
            if not bound:
                del self._by_user[name]

    def backed_up(self, connection: Endable) -> None:
        """`connection` holds `write_buffer_high` of unsent replies (its client reads none).

        Past `max_buffered_bytes` in all, the connection backed up longest is
        closed at once, its unsent replies dropped.
        """
        backed_up = self._backed_up
        backed_up[connection] = None
        limits = self._limits
        # The newest stays: the budget always admits one.
        while len(backed_up) * limits.write_buffer_high > limits.max_buffered_bytes:
            earliest = next(iter(backed_up))
            if earliest is connection:
                break
            del backed_up[earliest]
            log.warning(
                "closing %s: it read none of its replies, and unread replies of all"
                " connections passed max_buffered_bytes (%d)",
                earliest.caller.peer,
                limits.max_buffered_bytes,
            )
            earliest.fail(
                LimitExceeded(
                    "too many unread replies on the server: this connection read none of its "
                    "replies for the longest",
                    limit="max_buffered_bytes",
                    maximum=limits.max_buffered_bytes,
                )
            )

    @property
    def authenticated_count(self) -> int:
        """How many open connections have authenticated."""
        return len(self.open) - len(self._unauthenticated)

    @property
    def backed_up_count(self) -> int:
        """How many connections hold `write_buffer_high` of unsent replies."""
        return len(self._backed_up)

    def caught_up(self, connection: Endable) -> None:
        """`connection`'s unsent replies went below `write_buffer_high` again."""
        self._backed_up.pop(connection, None)

    def forget(self, connection: Endable) -> None:
        """The connection is gone: count it out everywhere (again is harmless)."""
        self._forget(connection)
        if not self.open and self._all_closed is not None:
            self._all_closed.set()

    def _forget(self, connection: Endable) -> None:
        # A connection being shed is counted out at once, before it has
        # finished closing, so the one that replaces it fits.
        self.open.discard(connection)
        self._by_caller.pop(connection.caller, None)
        self._unauthenticated.pop(connection, None)
        self._backed_up.pop(connection, None)
        address = self._address.pop(connection, None)
        if address is not None:
            left = self._by_address[address] - 1
            if left:
                self._by_address[address] = left
            else:
                del self._by_address[address]
        if connection.caller.user is not None:
            self._unbind(connection, connection.caller.name)

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


def _too_many(maximum: int) -> LimitExceeded:
    return LimitExceeded("too many connections", limit="max_connections", maximum=maximum)
