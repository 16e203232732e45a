"""The ways a call can end without a reply: no connection could be made, it was gone, or it went.

The difference matters for anything that changes state. `ConnectionClosed`
from a call that never left the client means it had no effect.
`ConnectionLost` means the request was written and the connection ended
before its reply: the server may or may not have carried it out, and the
client never sends it again on its own.
"""

from __future__ import annotations

from typing import Any

from ..errors import ErrorCode, TcpmqError


class ConnectionClosed(TcpmqError):
    """The connection is gone; the call cannot get a reply.

    `code` says why, as far as the client knows:

    - the server's `bye` reason when it sent one: `shutting_down` (server
      stopping), `auth_failed` (this user was deleted), `unauthenticated`
      (no auth within the server's `auth_timeout`), `limit_exceeded` (too
      many connections; `details` carry `limit` and `max`);
    - `frame_too_large` when a reply line exceeded `MAX_REPLY_BYTES`;
    - `internal` when the server broke the protocol (an undecodable line,
      a reply to no request, a mismatched id);
    - `shutting_down` otherwise: EOF without `bye`, a transport error, or
      `close()` on this client.

    It is a distinct class, so `except AuthFailed` does not catch a closed
    connection whose `code` happens to be `auth_failed`.
    """

    code = ErrorCode.SHUTTING_DOWN

    @classmethod
    def from_bye(cls, error: Any) -> ConnectionClosed:
        """The exception for a `bye` event carrying `error`."""
        if not isinstance(error, dict):
            return cls("server said bye without a reason")
        raw_code = str(error.get("code", ErrorCode.SHUTTING_DOWN))
        message = str(error.get("message", raw_code))
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        try:
            code = ErrorCode(raw_code)
        except ValueError:
            # A code from a newer server: keep the raw string, as from_wire does.
            exc = cls(message, **details)
            exc.code = raw_code  # type: ignore[assignment]
            return exc
        return cls(message, code=code, **details)

    def clone(self) -> ConnectionClosed:
        """A fresh instance with the same reason.

        Every failed call raises its own instance, so tracebacks of unrelated
        callers do not pile up on one shared exception object.
        """
        exc = type(self)(self.message, **self.details)
        exc.code = self.code
        return exc


class ConnectionLost(ConnectionClosed):
    """The connection ended after the request was sent and before its reply came.

    The outcome is unknown: a `publish` that raised this may have been
    enqueued, an `ack` may have been applied. The client does not resend it
    (not even with `reconnect`): publish again and accept a possible
    duplicate, or find out first. `code` and `details` are those of the
    connection's end, as for `ConnectionClosed`.
    """

    @classmethod
    def during(cls, op: str, reason: ConnectionClosed) -> ConnectionLost:
        """The exception for a pending `op` when the connection ended for `reason`."""
        exc = cls(
            f"connection lost before the reply to {op!r}, so its outcome is unknown: "
            f"{reason.message}",
            **reason.details,
        )
        exc.code = reason.code
        return exc


class ConnectFailed(ConnectionClosed, OSError):
    """The TCP connection could not be made (refused, unreachable, no such host).

    Nothing was sent. It is an `OSError` too, with the `errno` and
    `strerror` of the failure, so code written for the socket error keeps
    working; `except TcpmqError` catches it with every other tcpmq failure.
    """

    @classmethod
    def from_os_error(cls, address: str, exc: OSError) -> ConnectFailed:
        """The exception for failing to connect to `address` with `exc`."""
        reason = exc.strerror or str(exc) or type(exc).__name__
        failed = cls(f"cannot connect to {address}: {reason.lower()}")
        failed.errno = exc.errno
        failed.strerror = exc.strerror
        return failed

    def __str__(self) -> str:
        # OSError's own form ("[Errno 111] ...") would hide which address failed.
        return self.message
