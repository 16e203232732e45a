"""One client connection: framing, the lifecycle state table, in-order replies, flow control.

Theory of operation: `data_received` feeds the frame decoder, queues the
complete frames in `_backlog` and handles them in order, collecting the reply
lines and writing them with one `write` per read. A request is handled by
calling its handler with the application and the caller (see app.py, ops.py):
the connection knows no channels or queues. Handling stops while a reply is
pending (a handler returned a `Pending`: long-poll, login), so replies keep
request order, and while the transport's write buffer is above
`write_buffer_high`. When the backlog holds `max_pipeline` frames or
`max_pipeline_bytes`, or writing is paused, reading pauses too: a client that
floods requests or does not read its replies only slows itself. After
`frames_per_turn` frames (four times as many while none of its replies wait
for the disk) a connection yields to the rest of the loop (other
connections, and the disk telling which replies may go) and handles the rest
of its backlog on its next turn: one large pipelined read cannot hold
everyone else, and its first replies leave while its last are still being
handled.

Consecutive publishes to one channel form a *run* that is published as one
batch when the next other request comes, or when the frames read so far are
handled (see ops.PublishRun): pipelined publishers cost a fraction per
message, and replies still leave one per request, in order.

Durability: no reply leaves before the backend's changes made up to the
moment it was made are durable. At each flush the connection takes a ticket
from the backend's `Commits` (covering every change so far); replies that
must wait are held in `_held` with that ticket and go out, in order, once
`durable()` reaches it. Meanwhile the connection keeps handling requests, so
a pipelining client fills the next group commit. A backend that keeps
nothing on disk gives tickets that are durable at once, and nothing is held.

Lifecycle (the whole table; `_ALLOWED` says which ops each state admits):

    AWAITING_AUTH --auth/login ok--> READY
    AWAITING_AUTH, READY --EOF, close(reason)--> CLOSING --replies sent--> CLOSED
    any --connection lost--> CLOSED

CLOSING is entered when the client ends its sending side (EOF), when the
server closes the connection (shutdown, user deleted, auth timeout) or when a
frame is too large. In it no new request is read; a waiting pull is answered
at once (an empty list); at EOF the requests already read are still handled.
Every reply made is then sent, those waiting for the disk included, before
the `bye` (if any) and the close. Nothing relies on the transport staying
open after EOF (a TLS transport does not): at EOF the backend is asked to
make its changes durable on the spot, and the replies go out at once.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections import deque
from typing import cast

import orjson

from . import audit, wire
from .app import App, Caller
from .deadlines import DeadlineTimer
from .errors import (
    ErrorCode,
    FrameTooLarge,
    InternalError,
    LimitExceeded,
    TcpmqError,
    Unauthenticated,
)
from .frame import FrameDecoder
from .ops import HANDLERS, PublishRun, decode_publish
from .pending import Pending

log = logging.getLogger(__name__)

_connection_ids = itertools.count(1)


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


_ALLOWED: dict[State, frozenset[str] | None] = {
    State.AWAITING_AUTH: frozenset({"auth", "login", "ping"}),
    State.READY: None,  # every op
    # Requests read before EOF are still answered, as the state they came in allows.
    State.CLOSING: None,
    State.CLOSED: frozenset(),
}


class Connection(asyncio.Protocol):
    def __init__(self, app: App, deadlines: DeadlineTimer) -> None:
        self.app = app
        self._deadlines = deadlines
        limits = app.limits
        self._limits = limits
        self._commits = app.backend.commits
        self._decoder = FrameDecoder(limits.max_frame_bytes)
        self.state = State.AWAITING_AUTH
        self.caller = Caller(next(_connection_ids), "?")
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        # How many replies in _out are storage_full refusals (see _flush).
        self._out_refusals = 0
        # Replies waiting for the disk: (ticket, lines), oldest first.
        self._held: deque[tuple[int, list[bytes]]] = deque()
        self._held_bytes = 0
        self._awaiting_disk = False
        # CLOSING: close the transport once the held replies are sent.
        self._close_when_sent = False
        # Frames read but not yet handled (a reply is pending, or the client is
        # not reading its replies); None marks where a frame was too large.
        self._backlog: deque[bytes | None] = deque()
        self._backlog_bytes = 0
        # Frames at the backlog's head already seen to be pulls (see _request_behind_wait).
        self._stream_ahead = 0
        self._pending: Pending | None = None
        # Publishes read but not yet published (see _join_run).
        self._run: PublishRun | None = None
        self._pending_head = b""
        self._turn_scheduled = False
        self._reading_paused = False
        self._writing_paused = False
        self._eof = False
        self._auth_timer: asyncio.TimerHandle | None = None
        # Until authenticated: each line read moves the deadline, up to the limit.
        self._auth_deadline = 0.0
        self._auth_limit = 0.0

    @property
    def peer(self) -> str:
        return self.caller.peer

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.caller.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=self._limits.write_buffer_high)
        if not self.app.connections.admit(self):
            audit.event("connection_refused", peer=self.caller.peer, reason="max_connections")
            maximum = self._limits.max_connections
            self.close(
                LimitExceeded("too many connections", limit="max_connections", maximum=maximum)
            )
            return
        audit.event("connect", conn=self.caller.conn_id, peer=self.caller.peer)
        transport.write(wire.hello(self._limits.max_frame_bytes))
        loop = asyncio.get_running_loop()
        self._auth_limit = loop.time() + self._limits.max_auth_time
        self._auth_deadline = loop.time() + self._limits.auth_timeout
        self._auth_timer = loop.call_at(self._auth_deadline, self._auth_expired)

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED or self.state is State.CLOSING:
            return
        frames = self._decoder.feed(data)
        if self._auth_timer is not None and frames:
            # Someone is typing: give them auth_timeout more, within max_auth_time.
            now = asyncio.get_running_loop().time()
            self._auth_deadline = min(now + self._limits.auth_timeout, self._auth_limit)
        backlog = self._backlog
        backlog.extend(frames)
        self._backlog_bytes += sum(map(len, frames))
        if self._decoder.error is not None:
            backlog.append(None)
        if self._pending is not None and self._request_behind_wait():
            # A waiting pull must not hold up what the client asks next: it
            # is answered now with what is ready (may complete it: see
            # _pending_done). Work under way (a login's hash) is not ended.
            self._pending.stop_waiting()
        self._drain_backlog()
        self._flush()
        self._update_reading()
        self._deadlines.watch()

    def eof_received(self) -> bool:
        # The client will send nothing more: answer what it sent, then close.
        if self.state is State.CLOSED or self.state is State.CLOSING:
            return True
        self._eof = True
        self.state = State.CLOSING
        if self._pending is not None:
            self._pending.stop_waiting()  # may complete it, and so resume
        self._resume()
        # True keeps a plain TCP transport open for what still runs (a
        # login's hash); a TLS transport closes regardless, which is why
        # _finish does not wait for the disk.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        audit.event("disconnect", conn=self.caller.conn_id, user=self.caller.name or "-")
        self.state = State.CLOSED
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._backlog.clear()
        self._backlog_bytes = 0
        self._stream_ahead = 0
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self.app.connections.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._backlog:
            asyncio.get_running_loop().call_soon(self._resume)
        else:
            self._update_reading()

    # -- authentication -----------------------------------------------------

    def _authenticated(self) -> None:
        self.state = State.READY
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.state is not State.AWAITING_AUTH:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._auth_deadline:
            # A line came meanwhile: wait on (the timer moves lazily, not per read).
            self._auth_timer = loop.call_at(self._auth_deadline, self._auth_expired)
            return
        limits = self._limits
        self.close(
            Unauthenticated(
                f"not authenticated: no line for {limits.auth_timeout:g} seconds, "
                f"or {limits.max_auth_time:g} seconds in all"
            )
        )

    # -- requests and replies -------------------------------------------------

    def _handle(self, frame: bytes) -> None:
        head = b""
        try:
            request = wire.parse_frame(frame)
            head = wire.take_id(request)
            op = wire.take_op(request)
            # READY admits every op: skip the set lookup there. A connection
            # that is CLOSING answers what it read as its caller allows.
            if self.state is not _READY and self.caller.user is None and op not in _PRE_AUTH:
                raise Unauthenticated("authenticate first with auth or login")
            if op == "publish":
                channel, data = decode_publish(self.app, self.caller, request)
                self._join_run(head, channel, data)
                return
            # Whatever this request does or answers comes after the run before it.
            self._end_run()
            result = HANDLERS[op](self.app, self.caller, wire.decode_fields(op, request))
        except TcpmqError as exc:
            self._end_run()
            self._out.append(wire.reply_error(head, exc))
            if exc.code is ErrorCode.STORAGE_FULL:
                self._out_refusals += 1
            return
        except Exception:
            log.exception("internal error handling a request from %s", self.peer)
            self._end_run()
            self._out.append(wire.reply_error(head, InternalError("internal server error")))
            return
        if isinstance(result, Pending):
            self._pending = result
            self._pending_head = head
            result.on_done(self._pending_done)
            # Nothing more will come, or a request already read waits behind it.
            if self._eof or (self._backlog and self._request_behind_wait()):
                result.stop_waiting()
        else:
            if self.state is State.AWAITING_AUTH and self.caller.user is not None:
                self._authenticated()
            reply = wire.reply_ok(head, result)
            self._out.append(reply)
            self._out_bytes += len(reply)

    def _request_behind_wait(self) -> bool:
        """Whether a request other than a pull, ack or nack waits behind the pending reply.

        Such a request ends a waiting pull (it would otherwise wait for the
        pull's whole `wait`). A consumer's own stream, pulls and the acks of
        what it got, waits in turn: a consumer that keeps several pulls in
        flight and acks as batches come would otherwise turn every ack into
        an empty reply and one more pull. Each frame is looked at once
        (`_stream_ahead` counts the frames already seen at the backlog's
        head), and only while a reply is pending: off the hot path.
        """
        for frame in itertools.islice(self._backlog, self._stream_ahead, None):
            if not _in_consumer_stream(frame):
                return True
            self._stream_ahead += 1
        return False

    def _join_run(self, head: bytes, channel: str, data: bytes | list[bytes]) -> None:
        """Add a publish to the run of them being read (see ops.PublishRun).

        A run is bounded like one batch publish (and its journal record).
        """
        run = self._run
        limits = self._limits
        if type(data) is bytes:  # one message: nearly every publish
            if (
                run is None
                or run.channel != channel
                or len(run.datas) >= limits.max_batch
                or run.size + len(data) > limits.max_frame_bytes
            ):
                self._end_run()
                run = self._run = PublishRun(channel)
            run.add(head, data)
            return
        assert isinstance(data, list)
        size = sum(map(len, data))
        if (
            run is None
            or run.channel != channel
            or len(run.datas) + len(data) > limits.max_batch
            or run.size + size > limits.max_frame_bytes
        ):
            self._end_run()
            run = self._run = PublishRun(channel)
        run.add_batch(head, data, size)

    def _end_run(self) -> None:
        """Publish the run of publishes, if any, and queue their replies."""
        run = self._run
        if run is None:
            return
        self._run = None
        try:
            replies = run.replies(self.app, self.caller)
        except Exception:
            log.exception("internal error publishing for %s", self.peer)
            error = InternalError("internal server error")
            replies = [wire.reply_error(head, error) for head in run.heads]
        self._out.extend(replies)
        self._out_bytes += sum(map(len, replies))
        self._out_refusals += run.refusals

    def _pending_done(self, pending: Pending) -> None:
        if pending is not self._pending:
            return
        self._pending = None
        outcome = pending.outcome
        if isinstance(outcome, TcpmqError):
            self._out.append(wire.reply_error(self._pending_head, outcome))
            if outcome.code is ErrorCode.STORAGE_FULL:
                self._out_refusals += 1
        else:
            if self.state is State.AWAITING_AUTH and self.caller.user is not None:
                self._authenticated()
            self._out.append(wire.reply_ok(self._pending_head, outcome))
        # This may run inside another connection's publish: reply now, but
        # handle this connection's backlog on a fresh stack, never re-entering
        # the backend from within one of its own calls.
        self._flush()
        asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if self.state is State.CLOSED or self._close_when_sent:
            return
        self._drain_backlog()
        self._flush()
        self._update_reading()
        self._deadlines.watch()
        if self._eof and self._pending is None and not self._backlog:
            self._finish()

    def _drain_backlog(self) -> None:
        """Handle queued frames until one must wait: for a pending reply or a full write buffer."""
        try:
            self._drain_frames()
        finally:
            self._end_run()

    def _drain_frames(self) -> None:
        backlog = self._backlog
        flush_at = self._limits.write_buffer_high
        turn = self._limits.frames_per_turn
        if not self._held:
            # Nothing waits for the disk: the turn only bounds how long others
            # wait, and a longer one makes fewer, larger publish runs.
            turn *= 4
        # The loop's test is _must_wait_for_client, inlined: it runs per frame.
        while (
            backlog
            and self._pending is None
            and not (self._writing_paused or self._held_bytes >= flush_at)
        ):
            # (Closing empties the backlog, so a closed connection stops here.)
            if turn == 0:
                self._yield_turn()
                return
            turn -= 1
            frame = backlog.popleft()
            if self._stream_ahead:
                self._stream_ahead -= 1
            if frame is None:
                error = self._decoder.error or FrameTooLarge(self._limits.max_frame_bytes)
                self._end_run()
                self._out.append(wire.reply_error(b"", error))
                self.close(None)
                return
            self._backlog_bytes -= len(frame)
            self._handle(frame)
            if self._out_bytes >= flush_at:
                # Writing may pause us (pause_writing runs inside write), so a
                # client that does not read cannot make us build replies forever.
                self._flush()

    def _yield_turn(self) -> None:
        """Handle the rest of the backlog once the loop has run everything else ready."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._resume()

    def _must_wait_for_client(self) -> bool:
        # Stop making replies while the client does not read them, or while
        # too many wait for the disk (they are bounded like unsent bytes).
        return self._writing_paused or self._held_bytes >= self._limits.write_buffer_high

    def _flush(self) -> None:
        out = self._out
        held = self._held
        commits = self._commits
        if out:
            self._out = []
            # The replies in _out were all made since the last flush: a ticket
            # taken now covers every change they report.
            ticket = commits.ticket()
            if not held and ticket <= commits.durable():
                self._out_bytes = 0
                self._out_refusals = 0
                self._write(out)
                return
            if self._out_refusals == len(out):
                # Only storage_full refusals: they change and reveal nothing,
                # so they wait for no disk, only behind this connection's
                # earlier replies. A stalled store answers them at once.
                ticket = held[-1][0] if held else commits.durable()
            self._out_refusals = 0
            if not held and ticket <= commits.durable():
                self._out_bytes = 0
                self._write(out)
                return
            held.append((ticket, out))
            self._held_bytes += self._out_bytes
            self._out_bytes = 0
        if not held:
            return
        durable = commits.durable()
        ready: list[bytes] = []
        while held and held[0][0] <= durable:
            lines = held.popleft()[1]
            self._held_bytes -= sum(map(len, lines))
            ready.extend(lines)
        if ready:
            self._write(ready)
        if held and not self._awaiting_disk:
            self._awaiting_disk = True
            commits.when_durable(self._disk_caught_up)

    def _write(self, lines: list[bytes]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(lines[0] if len(lines) == 1 else b"".join(lines))

    def _disk_caught_up(self) -> None:
        self._awaiting_disk = False
        if self._transport is None or self._transport.is_closing():
            return
        self._flush()
        if self._held:
            return
        if self._close_when_sent:
            self._transport.close()
        elif self.state is not State.CLOSED and (self._backlog or self._reading_paused):
            # Handling had stopped because too many replies waited for the disk.
            self._resume()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self.state is State.CLOSED:
            return
        limits = self._limits
        should_pause = (
            self._must_wait_for_client()
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

    def _finish(self) -> None:
        """EOF and every request answered: send the replies now, then close.

        The transport may not stay open for the disk (TLS closes after EOF),
        so the backend makes its changes durable on the spot.
        """
        if self._held:
            self._commits.sync_now()
        self.close(None)

    def close(self, reason: TcpmqError | None) -> None:
        """Enter CLOSING: answer a waiting pull, send every reply made and
        `bye` with `reason` if given, then close the connection."""
        if self.state is State.CLOSED or self._close_when_sent or self._transport is None:
            return
        self.state = State.CLOSING
        pending = self._pending
        if pending is not None:
            # A waiting pull is answered (an empty list) before the bye;
            # work under way (a login's hash) cannot be, and is dropped.
            pending.stop_waiting()
            if self._pending is not None:
                self._pending.cancel()
                self._pending = None
        self._end_run()
        self._backlog.clear()
        self._backlog_bytes = 0
        self._stream_ahead = 0
        if reason is not None:
            self._out.append(wire.bye(reason))
        self._flush()
        self._close_when_sent = True
        if not self._held:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection without flushing (shutdown grace period over)."""
        if self._transport is not None:
            self._transport.abort()


def _in_consumer_stream(frame: bytes | None) -> bool:
    """Whether `frame` belongs to a consumer's stream: a pull, an ack or a nack."""
    if frame is None:  # too large: its error reply must not wait
        return False
    # Most frames name none of these ops anywhere: no parse for them.
    if b'"pull"' not in frame and b'"ack"' not in frame and b'"nack"' not in frame:
        return False
    try:
        request = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return False
    return type(request) is dict and request.get("op") in _CONSUMER_OPS


# A consumer pipelines these behind its waiting pulls: they wait their turn.
_CONSUMER_OPS = frozenset({"pull", "ack", "nack"})


_PRE_AUTH = _ALLOWED[State.AWAITING_AUTH] or frozenset()
_READY = State.READY  # a module global: one lookup less per request
