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
for the disk) or `bytes_per_turn` bytes of them, whichever comes first (at
least one frame; a frame's CPU cost grows with its size), a connection
yields to the rest of the loop (other connections, and the disk telling
which replies may go) and handles the rest
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
    CLOSING --replies sent, client may still be sending--> LINGERING
    LINGERING --client's EOF, close_linger--> CLOSED
    any --connection lost--> CLOSED

CLOSING is entered when the client ends its sending side (EOF), when the
server closes the connection (shutdown, user deleted, a timeout, a stalled
reader) or when a frame is too large. In it no new request is read; a waiting
pull is answered at once (an empty list); at EOF the requests already read
are still handled. Every reply made is then sent, those waiting for the disk
included, before the `bye` (if any) and the close. Over TLS the transport
is a `TlsLayer` (tlslayer.py), which stays open after the client's
close_notify or FIN as TCP does after a FIN, so a reply made later (a
login's) still goes out. At EOF the backend is asked to make its changes
durable on the spot, so the replies waiting for the disk go out at once
rather than after a sync.

LINGERING is the lingering close of HTTP servers: closing a socket with
unread input makes the kernel send a reset, and a reset destroys the replies
the client has not read yet (the `frame_too_large` error behind a 2 MiB
line, the `bye`). So when the client may still be sending, the server ends
only its own side once the replies are written (a FIN after them), reads
and discards the client's input until its EOF, and closes then. Whatever
happens, `close_linger` seconds after CLOSING began the connection is
dropped: a client that reads nothing cannot keep it.

Timers: one per connection at most, armed only while a deadline applies
(the auth deadline, the idle and write-stall timeouts, the close deadline)
and moved lazily: a read only records its time, and the timer, when it
fires, re-arms itself for the deadline that is next (`_on_timer`).

Before authentication a connection is kept cheap: a line may hold at most
`max_auth_frame_bytes`, and no more than that is read while an `auth` or
`login` is being checked (`_auth_line_too_long`, `_update_reading`); the
full `max_frame_bytes` applies from the line after a successful one.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Concatenate, ParamSpec, cast

import orjson

from . import audit, wire
from .app import App, Caller
from .config import Limits
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
from .loginlimits import source_address
from .ops import HANDLERS, PublishRun, RunReplies, decode_publish
from .pending import Outcome, Pending

log = logging.getLogger(__name__)

_connection_ids = itertools.count(1)
_P = ParamSpec("_P")


def _guarded(
    method: Callable[Concatenate[Connection, _P], None],
) -> Callable[Concatenate[Connection, _P], None]:
    """For the connection's methods that others call: the transport, the
    backend waking a pending reply, the disk saying what is durable, the loop.

    A request's own failures are answered `internal` where they happen
    (`_handle`, `_answer`, `Pending.settle`). This is the last line behind
    them: a bug in the connection itself is logged with its traceback and
    ends this connection with `bye` `internal`, and never escapes into the
    caller, which may be going through every connection waiting for the
    disk, or waking every pull of a queue, and must not stop half-way.
    """

    @functools.wraps(method)
    def guarded(self: Connection, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            log.exception("internal error on the connection from %s", self.peer)
            self._internal_failure()

    return guarded


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    READY = "ready"
    CLOSING = "closing"
    LINGERING = "lingering"
    CLOSED = "closed"


_ALLOWED: dict[State, frozenset[str] | None] = {
    State.AWAITING_AUTH: frozenset({"auth", "login", "ping"}),
    State.READY: None,  # every op
    # Requests read before EOF are still answered, as the state they came in allows.
    State.CLOSING: None,
    State.LINGERING: frozenset(),
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
        # The longest line before authentication (the lower of the two limits).
        self._auth_frame_bytes = min(limits.max_auth_frame_bytes, limits.max_frame_bytes)
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
        self._loop: asyncio.AbstractEventLoop | None = None  # set when connected
        # The one timer (see "Timers" above) and when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Until authenticated: each line read moves the deadline, up to the limit.
        self._auth_deadline = 0.0
        self._auth_limit = 0.0
        # When the client last sent something (kept only with idle_timeout on).
        self._last_read = 0.0
        # While writing is paused: the unsent bytes when last looked at, and when.
        self._stall_size = -1
        self._stall_checked = 0.0
        # CLOSING, LINGERING: when the connection is dropped whatever happens.
        self._close_deadline = 0.0
        # The client may have sent what the server has not read (see LINGERING).
        self._unread_input = False
        self._admitted = True  # False: refused by a connection limit

    @property
    def peer(self) -> str:
        return self.caller.peer

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        self._loop = loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            address = str(peer[0])
            self.caller.peer = f"{address}:{peer[1]}"
        else:
            address = self.caller.peer = str(peer)
        # An IPv6 client counts by its /64, which is what one host can spread over.
        self.caller.address = address = source_address(address)
        transport.set_write_buffer_limits(high=self._limits.write_buffer_high)
        refused = self.app.connections.admit(self, address)
        if refused is not None:
            _refusals.note(loop.time(), self.caller.peer, refused.details["limit"])
            self._admitted = False
            # At once, without lingering: the server is short of room.
            self.fail(refused)
            return
        audit.event("connect", conn=self.caller.conn_id, peer=self.caller.peer)
        if self._limits.tcp_keepalive:
            _keep_alive(transport, self._limits.tcp_keepalive)
        transport.write(wire.hello(self._limits.max_frame_bytes))
        now = loop.time()
        self._auth_limit = now + self._limits.max_auth_time
        self._auth_deadline = now + self._limits.auth_timeout
        self._arm(self._auth_deadline)

    @_guarded
    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is not _READY:
            if state is State.CLOSING:
                self._unread_input = True  # more input after the close began
                return
            if state is State.CLOSED or state is State.LINGERING:
                return  # discarded
        frames = self._decoder.feed(data)
        if state is _READY:
            if self._limits.idle_timeout:
                self._last_read = cast(asyncio.AbstractEventLoop, self._loop).time()
        elif frames:
            # Someone is typing: give them auth_timeout more, within max_auth_time.
            now = cast(asyncio.AbstractEventLoop, self._loop).time()
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
        if not self._turn_scheduled:
            # Else it has had its turn: the frames wait for the next one (and
            # reading pauses once they fill the pipeline). The loop may read
            # a socket many times in a row; without this each read would
            # bring a turn of its own.
            self._drain_backlog()
        self._flush()
        self._update_reading()
        self._deadlines.watch()

    def eof_received(self) -> bool:
        # The client will send nothing more: answer what it sent, then close.
        if self.state is State.LINGERING:
            # It has read what it wanted: nothing unread is left to reset.
            if self._transport is not None:
                self._transport.close()
            return True
        if self.state is State.CLOSED or self.state is State.CLOSING:
            self._eof = True  # nothing more to linger for
            return True
        self._eof = True
        self.state = State.CLOSING
        if self._pending is not None:
            self._pending.hung_up()
            self._pending.stop_waiting()  # may complete it, and so resume
        self._resume()
        # True keeps the transport open for what still runs (a login's
        # hash); TCP and our TlsLayer both honour it.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            audit.event("disconnect", conn=self.caller.conn_id, user=self.caller.name or "-")
        self.state = State.CLOSED
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._backlog.clear()
        self._backlog_bytes = 0
        self._stream_ahead = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.app.connections.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        transport = self._transport
        if transport is not None and self._loop is not None:
            # The client is not reading: from now on it must make progress.
            self._stall_size = transport.get_write_buffer_size()
            self._stall_checked = self._loop.time()
            self._arm(self._stall_checked + self._limits.write_stall_timeout)
        self._update_reading()
        # Last: past the server's budget for unsent replies this may close one.
        self.app.connections.backed_up(self)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._stall_size = -1
        self.app.connections.caught_up(self)
        if self._backlog:
            asyncio.get_running_loop().call_soon(self._resume)
        else:
            self._update_reading()

    # -- authentication -----------------------------------------------------

    def _authenticated(self) -> None:
        self.state = State.READY
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._limits.idle_timeout and self._loop is not None:
            self._last_read = self._loop.time()
        self._rearm()

    def _auth_line_too_long(self) -> bool:
        """Before authentication: refuse an unterminated line over the auth limit.

        Unless a request that may authenticate is ahead of it (a login being
        checked, or a request not handled yet): then reading stops (see
        _update_reading) and the line is judged once that request is answered.
        Returns whether the line was refused (its error is in the backlog).
        """
        decoder = self._decoder
        limit = self._auth_frame_bytes
        if (
            self._pending is None
            and not self._backlog
            and decoder.error is None
            and decoder.tail_exceeds(limit)
        ):
            decoder.refuse(FrameTooLarge(limit, _auth_limit_name(self._limits)))
            self._backlog.append(None)
            return True
        return False

    # -- timers -------------------------------------------------------------

    def _arm(self, at: float) -> None:
        """Have the timer fire by `at` (it re-arms itself for later deadlines)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = cast(asyncio.AbstractEventLoop, self._loop).call_at(at, self._on_timer)

    def _next_deadline(self) -> float | None:
        if self._close_deadline:
            return self._close_deadline
        if self.state is State.AWAITING_AUTH:
            return self._auth_deadline
        if self.state is not _READY:
            return None
        limits = self._limits
        if self._stall_size >= 0:
            # Replies back up: not idle, but they must be read.
            return self._stall_checked + limits.write_stall_timeout
        if limits.idle_timeout and self._pending is None:
            return self._last_read + limits.idle_timeout
        return None

    def _rearm(self) -> None:
        at = self._next_deadline()
        if at is not None:
            self._arm(at)

    @_guarded
    def _on_timer(self) -> None:
        self._timer = None
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        now = loop.time()
        state = self.state
        limits = self._limits
        if state is State.CLOSED:
            return
        if self._close_deadline:
            if now >= self._close_deadline:
                # It had close_linger seconds to take its replies and go.
                self.abort()
                return
        elif state is State.AWAITING_AUTH:
            if now >= self._auth_deadline:
                self.close(
                    Unauthenticated(
                        f"not authenticated: no line for {limits.auth_timeout:g} seconds, "
                        f"or {limits.max_auth_time:g} seconds in all"
                    )
                )
                return
        elif state is _READY and self._ready_timed_out(now):
            return
        self._rearm()

    def _ready_timed_out(self, now: float) -> bool:
        """Close a READY connection whose replies stall or that is idle; returns whether it did."""
        limits = self._limits
        if self._stall_size >= 0:
            if now < self._stall_checked + limits.write_stall_timeout:
                return False
            unsent = cast(asyncio.Transport, self._transport).get_write_buffer_size()
            if unsent < self._stall_size:
                # It read some: a slow reader, not a stalled one.
                self._stall_size, self._stall_checked = unsent, now
                return False
            log.info("closing %s: it read none of its replies", self.peer)
            self.close(_timeout("write_stall_timeout", limits.write_stall_timeout))
            return True
        if limits.idle_timeout and self._pending is None:
            if now < self._last_read + limits.idle_timeout:
                return False
            self.close(_timeout("idle_timeout", limits.idle_timeout))
            return True
        return False

    # -- requests and replies -------------------------------------------------

    def _handle(self, frame: bytes) -> None:
        head = b""
        # READY admits every op: skip the checks below there. A connection
        # that is CLOSING answers what it read as its caller allows.
        unauthenticated = self.state is not _READY and self.caller.user is None
        if unauthenticated and len(frame) > self._auth_frame_bytes:
            # Refused before it is parsed; closing empties the backlog.
            limit = self._auth_frame_bytes
            self._refuse_frame(FrameTooLarge(limit, _auth_limit_name(self._limits)))
            return
        try:
            if unauthenticated:
                wire.check_preauth_containers(frame)
            request = wire.parse_frame(frame)
            head = wire.take_id(request)
            op = wire.take_op(request)
            if unauthenticated and op not in _PRE_AUTH:
                raise Unauthenticated("authenticate first with auth or login")
            if op == "publish":
                channel, data = decode_publish(self.app, self.caller, request)
                self._join_run(head, channel, data)
                return
            # Whatever this request does or answers comes after the run before it.
            if self._run is not None and self._run_waits(frame):
                return
            result = HANDLERS[op](self.app, self.caller, wire.decode_fields(op, request))
        except TcpmqError as exc:
            if self._run is not None and self._run_waits(frame):
                return
            self._answer(head, exc)
            if exc.code is ErrorCode.STORAGE_FULL:
                self._out_refusals += 1
            return
        except Exception:
            log.exception("internal error handling a request from %s", self.peer)
            if self._run is not None and self._run_waits(frame):
                return
            self._answer(head, InternalError("internal server error"))
            return
        if isinstance(result, Pending):
            self._pending = result
            self._pending_head = head
            result.on_done(self._pending_done)
            # Nothing more will come, or a request already read waits behind it.
            if self._eof:
                result.hung_up()
                result.stop_waiting()
            elif self._backlog and self._request_behind_wait():
                result.stop_waiting()
        else:
            if self.state is State.AWAITING_AUTH and self.caller.user is not None:
                self._authenticated()
            self._answer(head, result)

    def _answer(self, head: bytes, outcome: Outcome) -> None:
        """Queue the reply to a request: the one place an outcome becomes a line.

        Every reply but a publish's passes here: the handler's result or
        error, and a pending reply's outcome (see _pending_done). A result
        that cannot be encoded (orjson refuses integers beyond 64 bits) is a
        bug: it is logged with its traceback and answered `internal`, and
        the connection goes on.
        """
        try:
            if isinstance(outcome, TcpmqError):
                reply = wire.reply_error(head, outcome)
            else:
                reply = wire.reply_ok(head, outcome)
        except Exception:
            log.exception("internal error encoding a reply to %s", self.peer)
            reply = wire.reply_error(head, InternalError("internal server error"))
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

    def _run_waits(self, frame: bytes | None) -> bool:
        """End the publish run before `frame`; if its replies wait (a backend across
        the network), put `frame` back to be handled after them."""
        self._end_run()
        if self._pending is None:
            return False
        self._backlog.appendleft(frame)
        if frame is not None:
            self._backlog_bytes += len(frame)
        self._stream_ahead = 0
        return True

    def _end_run(self) -> None:
        """Publish the run of publishes, if any, and queue their replies."""
        run = self._run
        if run is None or self._pending is not None:
            # (A run read behind an earlier run's waiting replies waits for them.)
            return
        self._run = None
        try:
            replies = run.replies(self.app, self.caller)
        except Exception:
            log.exception("internal error publishing for %s", self.peer)
            error = InternalError("internal server error")
            replies = [wire.reply_error(head, error) for head in run.heads]
        if isinstance(replies, RunReplies):
            # A backend across the network: the replies wait, and so does the backlog.
            self._pending = replies
            self._pending_head = b""
            replies.on_done(self._pending_done)
            return
        self._out.extend(replies)
        self._out_bytes += sum(map(len, replies))
        self._out_refusals += run.refusals

    @_guarded
    def _pending_done(self, pending: Pending) -> None:
        if pending is not self._pending:
            return
        self._pending = None
        outcome = pending.outcome
        if isinstance(pending, RunReplies):
            self._run_replied(pending)
        else:
            if self.state is State.AWAITING_AUTH and self.caller.user is not None:
                self._authenticated()
            self._answer(self._pending_head, outcome)
            if isinstance(outcome, TcpmqError) and outcome.code is ErrorCode.STORAGE_FULL:
                self._out_refusals += 1
        if self._limits.idle_timeout and self._loop is not None:
            # A long poll was activity: idleness counts from its end.
            self._last_read = self._loop.time()
            self._rearm()
        # This may run inside another connection's publish: reply now, but
        # handle this connection's backlog on a fresh stack, never re-entering
        # the backend from within one of its own calls.
        self._flush()
        asyncio.get_running_loop().call_soon(self._resume)

    def _run_replied(self, run: RunReplies) -> None:
        outcome = run.outcome
        if isinstance(outcome, TcpmqError):
            replies = [wire.reply_error(head, outcome) for head in run.heads]
        else:
            replies = run.lines
        self._out.extend(replies)
        self._out_bytes += sum(map(len, replies))

    @_guarded
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
            if self.state is State.AWAITING_AUTH and self._auth_line_too_long():
                self._drain_frames()
        finally:
            self._end_run()

    def _drain_frames(self) -> None:
        backlog = self._backlog
        flush_at = self._limits.write_buffer_high
        turn = self._limits.frames_per_turn
        budget = self._limits.bytes_per_turn
        # Large lines: only these can hold more than max_containers
        # containers, and they pass the gate one per pass of the loop.
        large_from = 2 * self._limits.max_containers
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
            if turn == 0 or budget <= 0:
                self._yield_turn()
                return
            turn -= 1
            frame = backlog.popleft()
            if self._stream_ahead:
                self._stream_ahead -= 1
            if frame is None:
                self._refuse_frame(
                    self._decoder.error or FrameTooLarge(self._limits.max_frame_bytes)
                )
                return
            size = len(frame)
            if size > large_from:
                if not self.app.large_requests.enter():
                    # Another connection's large request had this pass.
                    backlog.appendleft(frame)
                    self._stream_ahead = 0  # looked at again: harmless
                    self._yield_turn()
                    return
                if not self._containers_fit(frame):
                    self._backlog_bytes -= size
                    continue
            self._backlog_bytes -= size
            budget -= size
            self._handle(frame)
            if self._out_bytes >= flush_at:
                # Writing may pause us (pause_writing runs inside write), so a
                # client that does not read cannot make us build replies forever.
                self._flush()
        if budget <= 0 or turn == 0:
            # Its turn is spent even with nothing left to handle: what the
            # next reads of this pass of the loop bring waits for the next one.
            self._yield_turn()

    def _containers_fit(self, frame: bytes) -> bool:
        """Whether a long line is within max_containers; if not, answer it (before parsing)."""
        try:
            wire.check_containers(frame, self._limits.max_containers)
        except TcpmqError as exc:
            if self._run is not None and self._run_waits(frame):
                return False
            self._answer(b"", exc)
            return False
        return True

    def _refuse_frame(self, error: FrameTooLarge) -> None:
        """Answer a line over the limit, then close: the stream has no next frame."""
        if self._run is not None and self._run_waits(None):
            return
        self._out.append(wire.reply_error(b"", error))
        # The rest of the line may still be coming: linger for it.
        self._unread_input = True
        self.close(None)

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

    @_guarded
    def _disk_caught_up(self) -> None:
        self._awaiting_disk = False
        if self._transport is None or self._transport.is_closing():
            return
        self._flush()
        if self._held:
            return
        if self._close_when_sent:
            self._end_transport()
        elif self.state is not State.CLOSED and (self._backlog or self._reading_paused):
            # Handling had stopped because too many replies waited for the disk.
            self._resume()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self.state is State.CLOSED or self.state is State.LINGERING:
            return
        limits = self._limits
        should_pause = (
            self._must_wait_for_client()
            or len(self._backlog) >= limits.max_pipeline
            or self._backlog_bytes >= limits.max_pipeline_bytes
            # Unauthenticated: no more than one auth line's worth waits.
            or (
                self.state is _AWAITING_AUTH
                and self._backlog_bytes + self._decoder.buffered > self._auth_frame_bytes
            )
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

        Rather than wait for the next sync, the backend makes its changes
        durable on the spot, and the held replies go out with the close.
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
        # Input may wait unread: requests behind this point, or in the kernel.
        self._unread_input = self._unread_input or self._reading_paused or bool(self._backlog)
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
        self._set_close_deadline()
        if not self._held:
            self._end_transport()

    def _set_close_deadline(self) -> None:
        loop = self._loop
        if loop is not None and not self._close_deadline:
            self._close_deadline = loop.time() + self._limits.close_linger
            self._arm(self._close_deadline)

    def _end_transport(self) -> None:
        """Every reply is written: end the connection, lingering if input may be coming."""
        transport = cast(asyncio.Transport, self._transport)
        if self._eof or not self._unread_input or not transport.can_write_eof():
            transport.close()  # sends what is buffered first
            return
        self.state = State.LINGERING
        transport.write_eof()  # after the buffered replies
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def fail(self, reason: TcpmqError) -> None:
        """End the connection at once with `reason`, dropping every reply not sent.

        How a connection is shed to make room for a new one (registry.py):
        no lingering, nothing waited for.
        """
        self._held.clear()
        self._held_bytes = 0
        self._out = []
        self._out_bytes = 0
        self._run = None
        self._backlog.clear()
        self._backlog_bytes = 0
        self._stream_ahead = 0
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.state is not State.CLOSED:
            self.state = State.CLOSING
        self._close_when_sent = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(wire.bye(reason))
            transport.close()
            self._set_close_deadline()  # a client that reads nothing cannot hold it

    def _internal_failure(self) -> None:
        """End the connection after a bug: `bye` `internal` if it can be sent."""
        try:
            self.close(InternalError("internal server error"))
        except Exception:
            log.exception("could not close the connection from %s", self.peer)
            self.abort()

    def abort(self) -> None:
        """Drop the connection without flushing (shutdown grace period over)."""
        if self._transport is not None:
            self._transport.abort()

    def use_limits(self, limits: Limits) -> None:
        """Check `limits` from now on (a reload). Those applied once per connection
        (frame sizes, write buffer, keepalive) are not among the ones a reload changes."""
        self._limits = limits


class _RefusalLog:
    """Refused connections in the audit log: at most one line a second.

    A flood is refused thousands of times a second; a line for each would
    cost more than the refusal. Each line counts the ones left out before it.
    """

    def __init__(self) -> None:
        self._quiet_until = 0.0
        self._left_out = 0

    def note(self, now: float, peer: str, limit: str) -> None:
        if now < self._quiet_until:
            self._left_out += 1
            return
        audit.event("connection_refused", peer=peer, reason=limit, more=self._left_out)
        self._left_out = 0
        self._quiet_until = now + 1.0


_refusals = _RefusalLog()


def _keep_alive(transport: asyncio.Transport, seconds: float) -> None:
    """Have the kernel probe the peer after `seconds` of silence (as Redis does)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    idle = max(1, int(seconds))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's timing
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError as exc:  # not TCP (a Unix socket), or refused: no probes, no harm
        log.debug("no TCP keepalive for this connection: %s", exc)


def _auth_limit_name(limits: Limits) -> str:
    """The setting that bounds a line before authentication."""
    if limits.max_auth_frame_bytes < limits.max_frame_bytes:
        return "max_auth_frame_bytes"
    return "max_frame_bytes"


def _timeout(limit: str, seconds: float) -> LimitExceeded:
    return LimitExceeded(
        f"connection closed: {limit} of {seconds:g} seconds", limit=limit, maximum=seconds
    )


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
_AWAITING_AUTH = State.AWAITING_AUTH
