"""systemd's readiness protocol (sd_notify), spoken directly: a datagram to $NOTIFY_SOCKET.

Under `Type=notify` systemd passes a unix datagram socket's path in
$NOTIFY_SOCKET (an abstract one starts with '@', which is a NUL byte on the
wire) and reads `KEY=VALUE` lines from it: READY=1 when the broker listens,
RELOADING=1 and READY=1 around a reload, STOPPING=1 at shutdown, STATUS= for
`systemctl status`, and WATCHDOG=1 at least every $WATCHDOG_USEC (when the
unit sets `WatchdogSec=`): a broker whose event loop hangs stops sending it
and is restarted. Without $NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping

#: How often STATUS= is refreshed when no watchdog asks for more often.
STATUS_INTERVAL = 30.0


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog = _watchdog_seconds(environ)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """Send `lines` (`KEY=VALUE`) as one message; a failure is not the broker's problem."""
        if not self.address:
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
        ):
            sock.sendto("\n".join(lines).encode(), self.address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC: systemd 253+ wants it with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    async def keep_alive(self, status: Callable[[], str]) -> None:
        """Until cancelled: WATCHDOG=1 twice per watchdog period, STATUS= when it changes."""
        if not self.enabled:
            return
        interval = STATUS_INTERVAL if self.watchdog is None else self.watchdog / 2
        shown = ""
        while True:
            await asyncio.sleep(interval)
            lines = ["WATCHDOG=1"] if self.watchdog is not None else []
            if (now := status()) != shown:
                lines.append(f"STATUS={now}")
                shown = now
            if lines:
                self.send(*lines)


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """$WATCHDOG_USEC in seconds if it is meant for this process ($WATCHDOG_PID, if set)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        pid = environ.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
