"""The one timer for ack deadlines of the whole broker.

No timer per message or per queue: the backend knows its earliest deadline,
and this timer is armed for it, re-armed only when an earlier one appears
(`watch`, called after each batch of requests) or when it fires.
"""

from __future__ import annotations

import asyncio

from .backend import Backend


class DeadlineTimer:
    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0

    def watch(self) -> None:
        """Arm the timer if the backend now has an earlier deadline."""
        deadline = self._backend.next_deadline()
        if deadline is None:
            return
        if self._timer is None or deadline < self._at:
            if self._timer is not None:
                self._timer.cancel()
            self._at = deadline
            self._timer = self._loop.call_at(deadline, self._due)

    def _due(self) -> None:
        self._timer = None
        self._backend.expire(self._loop.time())
        self.watch()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
