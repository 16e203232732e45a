"""One client connection: framing, the lifecycle state table, in-order replies, flow control.

Theory of operation: `data_received` feeds the frame decoder, queues the
complete frames in `_backlog` and handles them in order, collecting the reply
lines and writing them with one `write` per read. Handling stops while a
reply is pending (a handler returned a `Pending`: long-poll, login), so
replies keep request order, and while the transport's write buffer is above
`write_buffer_high`. When the backlog holds `max_pipeline` frames or
`max_pipeline_bytes`, or writing is paused, reading pauses too: a client that
floods requests or does not read its replies only slows itself.

Lifecycle (the whole table; `_ALLOWED` says which ops each state admits):

    AWAITING_AUTH --auth/login ok--> READY --bye/close--> CLOSED
    AWAITING_AUTH --auth_timeout/bye/close--> CLOSED
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import orjson

from . import wire
from .errors import (
    FrameTooLarge,
    InternalError,
    LimitExceeded,
    TcpmqError,
    Unauthenticated,
)
from .frame import FrameDecoder
from .ops import HANDLERS
from .pending import Pending
from .users import User

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    READY = "ready"
    CLOSED = "closed"


_ALLOWED: dict[State, frozenset[str] | None] = {
    State.AWAITING_AUTH: frozenset({"auth", "login", "ping"}),
    State.READY: None,  # every op
    State.CLOSED: frozenset(),
}


class Session(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        limits = server.config.limits
        self._limits = limits
        self._decoder = FrameDecoder(limits.max_frame_bytes)
        self.state = State.AWAITING_AUTH
        self.user: User | None = None
        self.user_json = b""  # the user's name, JSON-encoded once for every publish
        self.is_admin = False
        self.peer = "?"
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        # Frames read but not yet handled (a reply is pending, or the client is
        # not reading its replies); None marks where a frame was too large.
        self._backlog: deque[bytes | None] = deque()
        self._backlog_bytes = 0
        self._pending: Pending | None = None
        self._pending_head = b""
        self._reading_paused = False
        self._writing_paused = False
        self._eof = False
        self._auth_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=self._limits.write_buffer_high)
        if not self.server.admit(self):
            maximum = self._limits.max_connections
            self.close(
                LimitExceeded("too many connections", limit="max_connections", maximum=maximum)
            )
            return
        transport.write(wire.hello(self._limits.max_frame_bytes))
        timeout = self._limits.auth_timeout
        self._auth_timer = self.server.loop.call_later(timeout, self._auth_expired)

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        frames = self._decoder.feed(data)
        backlog = self._backlog
        backlog.extend(frames)
        self._backlog_bytes += sum(map(len, frames))
        if self._decoder.error is not None:
            backlog.append(None)
        self._drain_backlog()
        self._flush()
        self._update_reading()
        self.server.watch_deadlines()

    def eof_received(self) -> bool:
        # The client will send nothing more; answer what it sent, then close.
        self._eof = True
        if self._pending is None and not self._backlog:
            self.close(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = State.CLOSED
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._backlog.clear()
        self._backlog_bytes = 0
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self.server.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._backlog:
            self.server.loop.call_soon(self._resume)
        else:
            self._update_reading()

    # -- authentication -----------------------------------------------------

    def authenticate(self, user: User) -> None:
        """Make `user` this connection's identity (called by auth and login).

        Raises:
            LimitExceeded: the user has `max_connections_per_user` connections.
        """
        self.server.bind_user(self, user)
        self.user = user
        self.user_json = orjson.dumps(user.name)
        self.is_admin = user.role == "admin"
        if self.state is State.AWAITING_AUTH:
            self.state = State.READY
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.state is State.AWAITING_AUTH:
            timeout = self._limits.auth_timeout
            self.close(Unauthenticated(f"not authenticated within {timeout:g} seconds"))

    # -- requests and replies -------------------------------------------------

    def _handle(self, frame: bytes) -> None:
        head = b""
        try:
            request = wire.parse_frame(frame)
            head = wire.take_id(request)
            op = wire.take_op(request)
            allowed = _ALLOWED[self.state]
            if allowed is not None and op not in allowed:
                raise Unauthenticated("authenticate first with auth or login")
            result = HANDLERS[op](self, wire.decode_fields(op, request))
        except TcpmqError as exc:
            self._out.append(wire.reply_error(head, exc))
            return
        except Exception:
            log.exception("internal error handling a request from %s", self.peer)
            self._out.append(wire.reply_error(head, InternalError("internal server error")))
            return
        if isinstance(result, Pending):
            self._pending = result
            self._pending_head = head
            result.on_done(self._pending_done)
        else:
            reply = wire.reply_ok(head, result)
            self._out.append(reply)
            self._out_bytes += len(reply)

    def _pending_done(self, pending: Pending) -> None:
        if pending is not self._pending:
            return
        self._pending = None
        outcome = pending.outcome
        if isinstance(outcome, TcpmqError):
            self._out.append(wire.reply_error(self._pending_head, outcome))
        else:
            self._out.append(wire.reply_ok(self._pending_head, outcome))
        # This may run inside another connection's publish: reply now, but
        # handle this connection's backlog on a fresh stack, never re-entering
        # the broker from within one of its own calls.
        self._flush()
        self.server.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self.state is State.CLOSED:
            return
        self._drain_backlog()
        self._flush()
        self._update_reading()
        self.server.watch_deadlines()
        if self._eof and self._pending is None and not self._backlog:
            self.close(None)

    def _drain_backlog(self) -> None:
        """Handle queued frames until one must wait: for a pending reply or a full write buffer."""
        backlog = self._backlog
        flush_at = self._limits.write_buffer_high
        while backlog and self._pending is None and not self._writing_paused:
            if self.state is State.CLOSED:
                return
            frame = backlog.popleft()
            if frame is None:
                error = self._decoder.error or FrameTooLarge(self._limits.max_frame_bytes)
                self._out.append(wire.reply_error(b"", error))
                self.close(None)
                return
            self._backlog_bytes -= len(frame)
            self._handle(frame)
            if self._out_bytes >= flush_at:
                # Writing may pause us (pause_writing runs inside write), so a
                # client that does not read cannot make us build replies forever.
                self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        self._out_bytes = 0
        if self._transport is not None and self.state is not State.CLOSED:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self.state is State.CLOSED:
            return
        limits = self._limits
        should_pause = (
            self._writing_paused
            or len(self._backlog) >= limits.max_pipeline
            or self._backlog_bytes >= limits.max_pipeline_bytes
        )
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # -- closing ------------------------------------------------------------

    def close(self, reason: TcpmqError | None) -> None:
        """Flush replies, send `bye` with `reason` if given, and close the connection."""
        if self.state is State.CLOSED or self._transport is None:
            return
        if reason is not None:
            self._out.append(wire.bye(reason))
        self._flush()
        self.state = State.CLOSED
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._backlog.clear()
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection without flushing (shutdown grace period over)."""
        if self._transport is not None:
            self._transport.abort()
