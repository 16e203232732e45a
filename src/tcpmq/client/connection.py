"""One TCP connection to a tcpmq server, with pipelined requests.

Theory of operation: the protocol answers every request with exactly one
reply, in the order the requests were sent, so the connection needs no
request ids to route replies: `send` encodes a request, appends a future to
a FIFO of pending calls and writes the line at once, without waiting for
earlier replies (pipelining); `wait` awaits that future. A single reader
task pops the oldest pending future for every reply line that arrives.
`send` appends and writes with no `await` in between, so the FIFO order
always equals the order of the bytes on the wire, however many tasks share
the connection, and a caller that sends two requests back to back (an ack
and the next pull) knows the server handles them in that order.

A call that gives up (timeout, cancellation) does not take its future out of
the FIFO: its reply is still coming and must be consumed in its turn, or every
later call would get the reply meant for its predecessor. The reader sees the
abandoned future is already done and drops that reply. The connection also
sends an integer `id` with each request and checks the echo, so a FIFO that
somehow drifted would close the connection instead of handing out wrong results.

Deadlines: the caller gives each request an absolute deadline (a pull's
includes its wait). Because the server holds back replies behind a waiting
`pull` or a `login`, a call never gets an earlier deadline than the call
before it that is still pending; otherwise a quick `ping` pipelined behind a
long-poll would time out although nothing is wrong. That also makes
deadlines non-decreasing along the FIFO, so one timer, armed for the oldest
unanswered call, serves them all (a timer per call costs more than the rest
of a pipelined call together). An expired call raises `TimeoutError` and
stays in the FIFO like any other abandoned call.

Errors: an `ok: false` reply raises the matching `TcpmqError` subclass
(`NotFound`, `Forbidden`, ...). When the connection ends (the server's `bye`,
EOF, a transport error, or `close()`), every pending call raises
`ConnectionLost` and every later one `ConnectionClosed`; then `on_close`
is called, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ..errors import ErrorCode, FrameTooLarge, InternalError, TcpmqError
from .errors import ConnectFailed, ConnectionClosed, ConnectionLost
from .url import Address

log = logging.getLogger(__name__)

# The longest reply line the client accepts. Replies are not bounded by the
# server's max_frame_bytes (a pull may return one message of nearly that size
# plus its envelope; `channel.list` with 10000 channels is about 1 MiB), so
# this is set far above anything the default limits produce. It only bounds
# the memory a broken or hostile server can make the client buffer.
MAX_REPLY_BYTES = 64 * 1024 * 1024

# How early a deadline timer may fire and still count as due.
_TIMER_SLACK = 0.002

_M = TypeVar("_M", bound=BaseModel)

Reply = dict[str, Any]


class Call(NamedTuple):
    """A request on the wire, until its reply arrives (or the connection ends)."""

    request_id: int
    op: str
    future: asyncio.Future[Reply]
    deadline: float


class Connection:
    """One connection: send requests, wait for their replies, in wire order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        address: Address,
        server_info: dict[str, Any],
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        #: The TLS settings it was opened with (None: plain TCP); a reconnect reuses them.
        self.tls = tls
        #: The server's `hello` greeting (`server`, `version`, `protocol`, ...).
        self.server_info = server_info
        #: Bounds `close()`; calls carry their own deadlines.
        self.timeout = timeout
        #: Called once, when the connection has ended (see `_shut`).
        self.on_close: Callable[[Connection], None] | None = None
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        max_frame = server_info.get("max_frame_bytes")
        #: Requests longer than this are refused locally (None: no check).
        self.max_frame_bytes = max_frame if isinstance(max_frame, int) else None
        self._pending: deque[Call] = deque()
        # The tail of _pending whose deadlines are still watched, and the one
        # timer for the earliest of them (see _expire).
        self._watched: deque[Call] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._next_id = 0
        self._close_reason: ConnectionClosed | None = None
        self._reader_task = self._loop.create_task(
            self._read_loop(), name=f"tcpmq-reader-{address.host}:{address.port}"
        )

    # -- state ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection has ended, for whatever reason."""
        return self._close_reason is not None

    @property
    def close_reason(self) -> ConnectionClosed | None:
        """Why the connection ended, or None while open."""
        return self._close_reason

    async def wait_closed(self) -> None:
        """Return once the connection has ended (`bye`, EOF or `close()`)."""
        await asyncio.wait([self._reader_task])

    async def close(self) -> None:
        """Close the connection. Pending calls raise `ConnectionLost`. Idempotent."""
        self._shut(ConnectionClosed("connection closed by the client"))
        self._reader_task.cancel()
        # asyncio.wait neither raises the task's CancelledError nor swallows
        # a cancellation of close() itself.
        await asyncio.wait([self._reader_task])
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.wait_closed()
        except TimeoutError:
            # The server is not reading, so the close cannot flush: drop it.
            self._writer.transport.abort()
        except OSError:
            pass  # a reset while closing is still closed

    def _shut(self, reason: ConnectionClosed) -> None:
        """End the connection once: fail all pending calls, close the transport."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watched.clear()
        pending = self._pending
        while pending:
            entry = pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(ConnectionLost.during(entry.op, reason))
        self._writer.close()
        if self.on_close is not None:
            self.on_close(self)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._expire)
        self._timer_at = deadline

    def _expire(self) -> None:
        """Fail the calls whose deadline has passed; re-arm for the next one.

        One timer serves all calls instead of one timer per call: deadlines
        never decrease along the FIFO, so only the oldest unanswered call can
        be due. An expired call stays in _pending: its reply is still owed.
        """
        self._timer = None
        # Timers may fire a little early (uvloop rounds to milliseconds).
        now = self._loop.time() + _TIMER_SLACK
        watched = self._watched
        while watched:
            entry = watched[0]
            if not entry.future.done():
                if entry.deadline > now:
                    self._arm(entry.deadline)
                    return
                entry.future.set_exception(
                    TimeoutError(f"no reply to {entry.op!r} within the client's timeout")
                )
            watched.popleft()

    # -- the reader ---------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = ConnectionClosed("client reader stopped")
        try:
            reason = await self._read_replies()
        except OSError as exc:
            reason = ConnectionClosed(f"connection lost: {exc}")
        except Exception as exc:
            # Never die silently with calls pending: they would hang forever.
            log.exception("tcpmq client reader failed")
            reason = ConnectionClosed(f"client reader failed: {exc!r}", code=ErrorCode.INTERNAL)
        finally:
            # Also on cancellation (close(), or the loop shutting down).
            self._shut(reason)

    async def _read_replies(self) -> ConnectionClosed:
        """Hand replies to pending calls until the connection ends; return why it ended."""
        readline = self._reader.readline
        pending = self._pending
        watched = self._watched
        while True:
            try:
                line = await readline()
            except ValueError:
                # StreamReader.readline turns LimitOverrunError into ValueError.
                return reply_too_large()
            if not line.endswith(b"\n"):
                # EOF, possibly in the middle of a line.
                return ConnectionClosed("server closed the connection")
            if line.isspace():
                continue
            try:
                frame = orjson.loads(line)
            except orjson.JSONDecodeError:
                return protocol_violation(f"undecodable line {line[:200]!r}")
            if not isinstance(frame, dict):
                return protocol_violation(f"line is not an object: {line[:200]!r}")
            if "event" in frame:
                if frame["event"] == "bye":
                    reason = ConnectionClosed.from_bye(frame.get("error"))
                    log.info("tcpmq server said bye: %s", reason.code)
                    return reason
                continue  # an event this version does not know
            if not pending:
                return protocol_violation("reply to no request")
            # A reply lacks the id only when the server could not read the
            # request at all (e.g. frame_too_large); otherwise it must echo it.
            # On a mismatch the entry stays queued, so _shut fails its caller too.
            request_id = pending[0].request_id
            if "id" in frame and frame["id"] != request_id:
                return protocol_violation(
                    f"reply id {frame['id']!r} where {request_id} was expected"
                )
            entry = pending.popleft()
            if watched and watched[0] is entry:
                watched.popleft()
            if not entry.future.done():  # done: the caller gave up (timeout, cancel)
                entry.future.set_result(frame)

    # -- the request path ---------------------------------------------------

    def send(self, op: str, fields: dict[str, Any], deadline: float) -> Call:
        """Write one request now and return its call; await it with `wait`.

        Raises:
            ConnectionClosed: the connection has ended; nothing was sent.
            FrameTooLarge: the request exceeds the server's `max_frame_bytes`;
                nothing was sent.
        """
        if self._close_reason is None and self._writer.transport.is_closing():
            # The reader has not seen the EOF yet, but nothing can be sent.
            self._shut(ConnectionClosed("connection lost"))
        if self._close_reason is not None:
            raise self._close_reason.clone()
        line = orjson.dumps(
            {"op": op, "id": self._next_id + 1, **fields}, option=orjson.OPT_APPEND_NEWLINE
        )
        if b"null" in line and _has_non_finite(fields):
            # orjson writes NaN and Infinity as null: the server would store a null.
            raise ValueError(f"{op}: NaN and Infinity are not JSON numbers")
        self._next_id += 1
        request_id = self._next_id
        if self.max_frame_bytes is not None and len(line) - 1 > self.max_frame_bytes:
            # The server would answer frame_too_large and then close the
            # connection under every other pipelined call; refuse it here.
            raise FrameTooLarge(self.max_frame_bytes)
        if self._pending:
            # Replies come in order: this one cannot come before the previous one.
            # _expire relies on this: deadlines never decrease along the FIFO.
            deadline = max(deadline, self._pending[-1].deadline)
        future: asyncio.Future[Reply] = self._loop.create_future()
        entry = Call(request_id, op, future, deadline)
        # Append and write with no await in between: FIFO order is wire order.
        self._pending.append(entry)
        self._watched.append(entry)
        if self._timer is None or deadline < self._timer_at:
            # Armed for a call answered since whose deadline was later (a long
            # pull, say), or not armed at all.
            self._arm(deadline)
        self._writer.transport.write(line)
        return entry

    async def wait(self, call: Call, late: Callable[[Reply], None] | None = None) -> Reply:
        """The `ok: true` reply to `call`.

        If the wait ends without the reply (timeout, cancellation), the reply
        is dropped when it comes; with `late`, a successful one is handed to
        `late` instead (to undo what it did, say).

        Raises:
            TcpmqError: the matching subclass for an `ok: false` reply.
            ConnectionLost: the connection ended before the reply came.
            TimeoutError: no reply by the call's deadline.
        """
        future = call.future
        try:
            if self._writer.transport.get_write_buffer_size():
                # Only when the socket is backed up: drain() returns at once
                # otherwise, and its timeout machinery costs more than the call.
                await self._drain(call.deadline)
            reply = await future
        except BaseException:
            self.forget(call, late)
            raise
        if reply.get("ok") is True:
            return reply
        error = reply.get("error")
        raise TcpmqError.from_wire(error if isinstance(error, dict) else {})

    async def call(self, op: str, fields: dict[str, Any], deadline: float) -> Reply:
        """`send` and `wait` in one."""
        return await self.wait(self.send(op, fields, deadline))

    def forget(self, call: Call, late: Callable[[Reply], None] | None = None) -> None:
        """Stop waiting for `call`: its reply is dropped (or, if ok, handed to `late`).

        The entry stays in the FIFO, since its reply is still due.
        """
        future = call.future
        if future.done():
            if not future.cancelled():
                future.exception()  # retrieved: asyncio must not report it
        elif late is None:
            future.cancel()
        else:

            def hand_over(done: asyncio.Future[Reply]) -> None:
                if done.cancelled() or done.exception() is not None:
                    return
                reply = done.result()
                if reply.get("ok") is True:
                    late(reply)

            future.add_done_callback(hand_over)

    async def _drain(self, deadline: float) -> None:
        """Wait until the server reads our requests (backpressure), up to `deadline`."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._writer.drain()
        except OSError as exc:
            # The reader will see the EOF too; fail everything now rather than later.
            self._shut(ConnectionClosed(f"connection lost: {exc}"))


def _has_non_finite(value: object) -> bool:
    """Whether a NaN or an infinity hides in `value` (JSON-like data)."""
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(item) for item in value)
    return False


async def open_connection(
    address: Address, time_limit: float, tls: ssl.SSLContext | None = None
) -> Connection:
    """Connect (with `tls`, over TLS, checking the certificate names the host)
    and read the greeting; `time_limit` seconds bound each of the two steps.

    Raises:
        ConnectFailed: the TCP connection could not be made.
        ssl.SSLError: the TLS handshake failed (an OSError too); a server
            that refuses the client's certificate may only say so at the
            greeting, in TLS 1.3.
        TimeoutError: no connection or no greeting in time.
        ConnectionClosed: the server sent `bye` instead of its greeting.
    """
    host, port = address
    try:
        async with asyncio.timeout(time_limit):
            if tls is None:
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_BYTES)
            else:
                reader, writer = await asyncio.open_connection(
                    host, port, limit=MAX_REPLY_BYTES, ssl=tls, server_hostname=host
                )
    except (TimeoutError, ssl.SSLError):
        raise  # not a failure to reach the server: it answered, too slowly or untrusted
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConnectFailed.from_os_error(where, exc) from exc
    try:
        async with asyncio.timeout(time_limit):
            hello = await _read_greeting(reader)
    except BaseException:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise
    return Connection(
        reader, writer, address=address, server_info=hello, timeout=time_limit, tls=tls
    )


async def _read_greeting(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        line = await reader.readline()
    except ValueError:
        raise reply_too_large() from None
    if not line.endswith(b"\n"):
        raise ConnectionClosed("server closed the connection before its greeting")
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise protocol_violation(f"undecodable greeting {line[:200]!r}") from None
    if isinstance(frame, dict):
        if frame.get("event") == "hello":
            return frame
        if frame.get("event") == "bye":
            # Sent instead of the greeting, e.g. when max_connections is reached.
            raise ConnectionClosed.from_bye(frame.get("error"))
    raise protocol_violation(f"expected a hello greeting, got {line[:200]!r}")


def reply_too_large() -> ConnectionClosed:
    return ConnectionClosed(
        f"reply line exceeds {MAX_REPLY_BYTES} bytes",
        code=ErrorCode.FRAME_TOO_LARGE,
        max=MAX_REPLY_BYTES,
    )


def protocol_violation(what: str) -> ConnectionClosed:
    log.error("tcpmq server broke the protocol: %s", what)
    return ConnectionClosed(f"server broke the protocol: {what}", code=ErrorCode.INTERNAL)


def parse(model: type[_M], value: Any, op: str) -> _M:
    """`value` from an `op` reply as `model`.

    Raises:
        InternalError: it does not fit: the server's bug. One exception root
            instead of pydantic's ValidationError.
    """
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InternalError(f"malformed {op} reply: {exc}") from exc


def parse_list(model: type[_M], value: Any, op: str) -> list[_M]:
    if not isinstance(value, list):
        raise InternalError(f"malformed {op} reply: expected a list, got {value!r}")
    return [parse(model, item, op) for item in value]
