"""One large request per pass of the event loop, across all connections.

A request costs the server CPU by its size (parsing takes up to ~90 ns a
byte, by its shape), and one request cannot be split: a 1 MiB line of the
costliest JSON holds the loop for tens of milliseconds. Turns (connection.py)
keep one connection from handling many in a row, but when several
connections each have a large request ready, one pass of the loop handles
all of them before it reads its sockets again, and a small request (a
`ping`) waits for every one. The gate lets one large request through per
pass: the others wait for a later pass, after the loop has read and answered
what arrived meanwhile. So a small request waits for at most about one large
request, however many connections send them.
"""

from __future__ import annotations

import asyncio


class LargeRequestGate:
    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open = True

    def enter(self) -> bool:
        """Whether a large request may be handled now (then the gate closes
        until the loop's next pass)."""
        if not self._open:
            return False
        self._open = False
        # Runs on the loop's next pass, after it has polled its sockets.
        asyncio.get_running_loop().call_soon(self._reopen)
        return True

    def _reopen(self) -> None:
        self._open = True
