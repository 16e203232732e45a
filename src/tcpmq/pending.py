"""Replies that are not known when their request is handled.

A long-poll pull, a login (password hashing runs in a thread) and, later, a
publish waiting for its fsync all answer later. The session holds back every
reply behind a `Pending` so that replies still leave in request order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .errors import InternalError, TcpmqError

log = logging.getLogger(__name__)

# What a handler produces: result fields as a dict, already-encoded result
# fields (see wire.reply_ok), None for a bare ok, or an error.
Result = dict[str, Any] | bytes | None
Outcome = Result | TcpmqError


class Pending:
    __slots__ = ("_on_done", "done", "outcome")

    def __init__(self) -> None:
        self._on_done: Callable[[Pending], None] | None = None
        self.done = False
        self.outcome: Outcome = None

    def complete(self, outcome: Outcome) -> None:
        """Settle the reply; later calls are ignored (first outcome wins)."""
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        self.release()
        if self._on_done is not None:
            self._on_done(self)

    def settle(self, make: Callable[[], Result]) -> None:
        """Complete with what `make` returns, or the `TcpmqError` it raises.

        Work that finishes later (a password hash, a user directory write)
        settles its reply here, so any other exception, a bug, is caught in
        this one place: logged with its traceback and answered `internal`,
        never lost in a callback with the client left waiting.
        """
        if self.done:
            return
        try:
            outcome: Outcome = make()
        except TcpmqError as exc:
            outcome = exc
        except Exception:
            log.exception("internal error completing a request")
            outcome = InternalError("internal server error")
        self.complete(outcome)

    def on_done(self, callback: Callable[[Pending], None]) -> None:
        self._on_done = callback
        if self.done:
            callback(self)

    def cancel(self) -> None:
        """The connection is gone: release resources; nobody will read the reply."""
        self._on_done = None
        if not self.done:
            self.done = True
            self.release()

    def stop_waiting(self) -> None:
        """The client will send nothing more (EOF): a reply that waits only for
        something to happen is given now. Work under way (a login) finishes."""

    def hung_up(self) -> None:
        """The client sent EOF: it may still read the reply, or may be gone.
        Work that waits its turn may let others go first (see passwords.py)."""

    def release(self) -> None:
        """Free what the wait holds (timers, registrations). Subclasses extend."""
