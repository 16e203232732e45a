"""The asyncio client library of tcpmq.

Theory of operation: one `Client` owns one TCP connection. The protocol
answers every request with exactly one reply, in the order the requests were
sent, so the client needs no request ids to route replies: each call encodes
its request, appends a future to a FIFO of pending calls and writes the line
at once, without waiting for earlier replies (pipelining). A single reader
task pops the oldest pending future for every reply line that arrives. The
append and the write happen together with no `await` between them, so the
FIFO order always equals the order of the bytes on the wire, however many
tasks share the connection.

A call that gives up (timeout, cancellation) does not take its future out of
the FIFO: its reply is still coming and must be consumed in its turn, or every
later call would get the reply meant for its predecessor. The reader sees the
abandoned future is already done and drops that reply. The client also sends
an integer `id` with each request and checks the echo, so a FIFO that somehow
drifted would close the connection instead of handing out wrong results.

Timeouts: each call gets `timeout` seconds, a `pull` gets `timeout + wait`.
Because the server holds back replies behind a waiting `pull` or a `login`,
a call never gets an earlier deadline than the call before it that is still
pending; otherwise a quick `ping` pipelined behind a long-poll would time out
although nothing is wrong. That also makes deadlines non-decreasing along the
FIFO, so one timer, armed for the oldest unanswered call, serves them all
(a timer per call costs more than the rest of a pipelined call together).
An expired call raises `TimeoutError` and stays in the FIFO like any other
abandoned call.

Errors: an `ok: false` reply raises the matching `TcpmqError` subclass
(`NotFound`, `Forbidden`, ...). When the connection ends (the server's `bye`,
EOF, a transport error, or `close()`), every pending and later call raises
`ConnectionClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ValidationError

from .config import DEFAULT_PORT
from .errors import ErrorCode, FrameTooLarge, InternalError, TcpmqError
from .models import (
    AckResult,
    ChannelInfo,
    Identity,
    LoginResult,
    Message,
    NackResult,
    OpHelp,
    PublishResult,
    QueueInfo,
    Role,
    SubscribeResult,
    UserInfo,
)

__all__ = [
    "DEFAULT_URL",
    "MAX_REPLY_BYTES",
    "Address",
    "Client",
    "Connecting",
    "ConnectionClosed",
    "connect",
    "parse_url",
]

log = logging.getLogger(__name__)

DEFAULT_URL = f"tcpmq://127.0.0.1:{DEFAULT_PORT}"

# The longest reply line the client accepts. Replies are not bounded by the
# server's max_frame_bytes (a pull may return one message of nearly that size
# plus its envelope; `channel.list` with 10000 channels is about 1 MiB), so
# this is set far above anything the default limits produce. It only bounds
# the memory a broken or hostile server can make the client buffer.
MAX_REPLY_BYTES = 64 * 1024 * 1024

# How early a deadline timer may fire and still count as due.
_TIMER_SLACK = 0.002

_M = TypeVar("_M", bound=BaseModel)


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
        exc = ConnectionClosed(self.message, **self.details)
        exc.code = self.code
        return exc


class Address(NamedTuple):
    host: str
    port: int


def parse_url(url: str) -> Address:
    """Split `tcpmq://host[:port]` into host and port (default 7878).

    IPv6 literals go in brackets: `tcpmq://[::1]:7878`. A trailing `/` is
    allowed; a path, query, fragment or user info is not.

    Raises:
        ValueError: the URL is not of that form or the port is out of range.
    """
    parts = urlsplit(url)  # raises ValueError on an unclosed IPv6 bracket
    if parts.scheme != "tcpmq":
        raise ValueError(f"not a tcpmq:// URL: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a tcpmq URL has no path, query or fragment: {url!r}")
    if "@" in parts.netloc:
        # Credentials belong in connect()'s arguments, not in a URL that gets
        # logged; nor in this message, hence no URL in it.
        raise ValueError("a tcpmq URL carries no user info; pass user and password to connect()")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    port = parts.port  # raises ValueError when not a number in 0..65535
    if port is None:
        port = DEFAULT_PORT
    elif port == 0:
        raise ValueError(f"port 0 in {url!r}")
    return Address(host, port)


class _Pending(NamedTuple):
    request_id: int
    op: str
    future: asyncio.Future[dict[str, Any]]
    deadline: float


class Client:
    """One authenticated (or not yet) connection to a tcpmq server.

    Make one with `connect()`. All methods may be called concurrently from
    many tasks; their requests are pipelined on the one connection.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        address: Address,
        server_info: dict[str, Any],
        timeout: float,
    ) -> None:
        self.address = address
        #: The server's `hello` greeting (`server`, `version`, `protocol`, ...).
        self.server_info = server_info
        self.timeout = timeout
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        max_frame = server_info.get("max_frame_bytes")
        self._max_frame_bytes = max_frame if isinstance(max_frame, int) else None
        # Calls in wire order, until their reply arrives (or the connection ends).
        self._pending: deque[_Pending] = deque()
        # The tail of _pending whose deadlines are still watched, and the one
        # timer for the earliest of them (see _expire).
        self._watched: deque[_Pending] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._next_id = 0
        self._close_reason: ConnectionClosed | None = None
        self._reader_task = self._loop.create_task(
            self._read_loop(), name=f"tcpmq-reader-{address.host}:{address.port}"
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connection state ---------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection has ended, for whatever reason."""
        return self._close_reason is not None

    @property
    def close_reason(self) -> ConnectionClosed | None:
        """Why the connection ended (see `ConnectionClosed`), or None while open."""
        return self._close_reason

    async def wait_closed(self) -> None:
        """Return once the connection has ended (`bye`, EOF or `close()`)."""
        await asyncio.wait([self._reader_task])

    async def close(self) -> None:
        """Close the connection. Pending calls raise `ConnectionClosed`. Idempotent."""
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
            future = pending.popleft().future
            if not future.done():
                future.set_exception(reason.clone())
        self._writer.close()

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
                return _reply_too_large()
            if not line.endswith(b"\n"):
                # EOF, possibly in the middle of a line.
                return ConnectionClosed("server closed the connection")
            if line.isspace():
                continue
            try:
                frame = orjson.loads(line)
            except orjson.JSONDecodeError:
                return _protocol_violation(f"undecodable line {line[:200]!r}")
            if not isinstance(frame, dict):
                return _protocol_violation(f"line is not an object: {line[:200]!r}")
            if "event" in frame:
                if frame["event"] == "bye":
                    reason = ConnectionClosed.from_bye(frame.get("error"))
                    log.info("tcpmq server said bye: %s", reason.code)
                    return reason
                continue  # an event this version does not know
            if not pending:
                return _protocol_violation("reply to no request")
            # A reply lacks the id only when the server could not read the
            # request at all (e.g. frame_too_large); otherwise it must echo it.
            # On a mismatch the entry stays queued, so _shut fails its caller too.
            request_id = pending[0].request_id
            if "id" in frame and frame["id"] != request_id:
                return _protocol_violation(
                    f"reply id {frame['id']!r} where {request_id} was expected"
                )
            entry = pending.popleft()
            if watched and watched[0] is entry:
                watched.popleft()
            if not entry.future.done():  # done: the caller gave up (timeout, cancel)
                entry.future.set_result(frame)

    # -- the request path ---------------------------------------------------

    async def request(self, op: str, /, **fields: Any) -> dict[str, Any]:
        """Send any request and return its result fields (the reply without `ok`).

        Fields are sent exactly as given (None becomes JSON null). The client
        sets `id` itself.

        Raises:
            TcpmqError: the matching subclass for an `ok: false` reply.
            ConnectionClosed: the connection ended before the reply came.
            TimeoutError: no reply within the client's timeout.
            ValueError: `fields` contains `id`.
        """
        if "id" in fields:
            raise ValueError("the client sets the request id itself")
        reply = await self._call(op, fields)
        del reply["ok"]
        reply.pop("id", None)
        return reply

    async def _call(
        self, op: str, fields: dict[str, Any], extra_time: float = 0.0
    ) -> dict[str, Any]:
        """Pipeline one request and return its `ok: true` reply.

        `extra_time` lengthens the deadline beyond `timeout` (a pull's wait).
        """
        if self._close_reason is None and self._writer.transport.is_closing():
            # The reader has not seen the EOF yet, but nothing can be sent.
            self._shut(ConnectionClosed("connection lost"))
        if self._close_reason is not None:
            raise self._close_reason.clone()
        self._next_id += 1
        request_id = self._next_id
        line = orjson.dumps(
            {"op": op, "id": request_id, **fields}, option=orjson.OPT_APPEND_NEWLINE
        )
        if self._max_frame_bytes is not None and len(line) - 1 > self._max_frame_bytes:
            # The server would answer frame_too_large and then close the
            # connection under every other pipelined call; refuse it here.
            raise FrameTooLarge(self._max_frame_bytes)
        deadline = self._loop.time() + self.timeout + extra_time
        if self._pending:
            # Replies come in order: this one cannot come before the previous one.
            # _expire relies on this: deadlines never decrease along the FIFO.
            deadline = max(deadline, self._pending[-1].deadline)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        entry = _Pending(request_id, op, future, deadline)
        # Append and write with no await in between: FIFO order is wire order.
        self._pending.append(entry)
        self._watched.append(entry)
        if self._timer is None or deadline < self._timer_at:
            # Armed for a call answered since whose deadline was later (a long
            # pull, say), or not armed at all.
            self._arm(deadline)
        transport = self._writer.transport
        transport.write(line)
        try:
            if transport.get_write_buffer_size():
                # Only when the socket is backed up: drain() returns at once
                # otherwise, and its timeout machinery costs more than the call.
                await self._drain(deadline)
            reply = await future
        except BaseException:
            # Leave the entry in the FIFO (its reply is still due) but make
            # sure the reader drops it and nothing is left unretrieved.
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()
            raise
        if reply.get("ok") is True:
            return reply
        error = reply.get("error")
        raise TcpmqError.from_wire(error if isinstance(error, dict) else {})

    async def _drain(self, deadline: float) -> None:
        """Wait until the server reads our requests (backpressure), up to `deadline`."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._writer.drain()
        except OSError as exc:
            # The reader will see the EOF too; fail everything now rather than later.
            self._shut(ConnectionClosed(f"connection lost: {exc}"))

    # -- ops ----------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the server answers; allowed before authentication."""
        await self._call("ping", {})

    async def login(self, user: str, password: str, ttl: int | None = None) -> LoginResult:
        """Authenticate with a password; the result carries a token for `auth`.

        Raises:
            AuthFailed: unknown user or wrong password.
            LimitExceeded: too many connections of this user.
        """
        fields: dict[str, Any] = {"user": user, "password": password}
        if ttl is not None:
            fields["ttl"] = ttl
        return _parse(LoginResult, await self._call("login", fields), "login")

    async def auth(self, token: str) -> Identity:
        """Authenticate with a token from `login` or `tcpmq token USER`.

        Raises:
            AuthFailed: malformed, forged or expired token, or its user is gone.
            LimitExceeded: too many connections of this user.
        """
        return _parse(Identity, await self._call("auth", {"token": token}), "auth")

    async def whoami(self) -> Identity:
        """The user and role of this connection."""
        return _parse(Identity, await self._call("whoami", {}), "whoami")

    async def help(self) -> list[OpHelp]:
        """The ops the server knows, with their field signatures."""
        reply = await self._call("help", {})
        return _parse_list(OpHelp, reply.get("ops"), "help")

    async def user_create(self, name: str, password: str, role: Role = "user") -> UserInfo:
        """Create a user (admins only).

        Raises:
            Forbidden: not an admin.
            AlreadyExists: the name is taken.
            LimitExceeded: `max_users` reached.
        """
        fields = {"name": name, "password": password, "role": role}
        reply = await self._call("user.create", fields)
        return _parse(UserInfo, reply.get("user"), "user.create")

    async def user_list(self) -> list[UserInfo]:
        """All users sorted by name (admins only)."""
        reply = await self._call("user.list", {})
        return _parse_list(UserInfo, reply.get("users"), "user.list")

    async def user_get(self, name: str) -> UserInfo:
        """One user; admins may get anyone, users themselves.

        Raises:
            Forbidden: neither admin nor that user.
            NotFound: no such user.
        """
        reply = await self._call("user.get", {"name": name})
        return _parse(UserInfo, reply.get("user"), "user.get")

    async def user_delete(self, name: str) -> None:
        """Delete a user, its queues, and its live connections (admins only).

        Raises:
            Forbidden: not an admin, or the last admin.
            NotFound: no such user.
        """
        await self._call("user.delete", {"name": name})

    async def channel_create(self, name: str) -> ChannelInfo:
        """Create a channel owned by this connection's user.

        Raises:
            AlreadyExists: the name is taken.
            LimitExceeded: `max_channels` reached.
        """
        reply = await self._call("channel.create", {"name": name})
        return _parse(ChannelInfo, reply.get("channel"), "channel.create")

    async def channel_list(self) -> list[ChannelInfo]:
        """All channels sorted by name (without their queues)."""
        reply = await self._call("channel.list", {})
        return _parse_list(ChannelInfo, reply.get("channels"), "channel.list")

    async def channel_get(self, name: str) -> ChannelInfo:
        """One channel, with `queues` filled in.

        Raises:
            NotFound: no such channel.
        """
        reply = await self._call("channel.get", {"name": name})
        return _parse(ChannelInfo, reply.get("channel"), "channel.get")

    async def channel_delete(self, name: str) -> None:
        """Delete a channel with its queues and messages.

        Raises:
            Forbidden: neither the channel's owner nor an admin.
            NotFound: no such channel.
        """
        await self._call("channel.delete", {"name": name})

    async def subscribe(
        self, channel: str, queue: str | None = None, ack_timeout: float | None = None
    ) -> SubscribeResult:
        """Add a queue to a channel (default name: the user's), or get the one you own.

        A given `ack_timeout` replaces the queue's previous one.

        Raises:
            NotFound: no such channel.
            Forbidden: the queue exists and belongs to another user.
            LimitExceeded: `max_queues_per_channel` reached.
        """
        fields: dict[str, Any] = {"channel": channel}
        if queue is not None:
            fields["queue"] = queue
        if ack_timeout is not None:
            fields["ack_timeout"] = ack_timeout
        return _parse(SubscribeResult, await self._call("subscribe", fields), "subscribe")

    async def queue_list(self, channel: str) -> list[QueueInfo]:
        """The queues of a channel sorted by name.

        Raises:
            NotFound: no such channel.
        """
        reply = await self._call("queue.list", {"channel": channel})
        return _parse_list(QueueInfo, reply.get("queues"), "queue.list")

    async def queue_delete(self, channel: str, queue: str) -> None:
        """Remove a queue and its messages (unsubscribe).

        Raises:
            NotFound: no such channel or queue.
            Forbidden: not the queue's or channel's owner, nor an admin.
        """
        await self._call("queue.delete", {"channel": channel, "queue": queue})

    async def publish(self, channel: str, data: Any) -> PublishResult:
        """Put one message (any JSON value, None included) into every queue of a channel.

        Raises:
            NotFound: no such channel.
            LimitExceeded: a queue of the channel is full; nothing was enqueued.
            FrameTooLarge: the request exceeds the server's `max_frame_bytes`
                (raised locally; nothing was sent).
        """
        reply = await self._call("publish", {"channel": channel, "data": data})
        return _parse(PublishResult, reply, "publish")

    async def publish_batch(self, channel: str, messages: Sequence[Any]) -> PublishResult:
        """Publish 1 to `max_batch` messages at once, all or nothing; ids are consecutive.

        Raises:
            NotFound: no such channel.
            BadRequest: `messages` is empty or longer than `max_batch`.
            LimitExceeded: a queue of the channel would overflow; nothing was enqueued.
            FrameTooLarge: the request exceeds `max_frame_bytes` (raised locally).
        """
        reply = await self._call("publish", {"channel": channel, "messages": list(messages)})
        return _parse(PublishResult, reply, "publish")

    async def pull(
        self, channel: str, queue: str | None = None, max: int = 1, wait: float = 0.0
    ) -> list[Message]:
        """Take up to `max` ready messages; with `wait` > 0, long-poll for the first.

        The reply's deadline is `timeout + wait`. While it waits, replies to
        later calls on this connection are held back by the server: long-poll
        on a connection of its own if the program must not stall.

        Raises:
            NotFound: no such channel or queue (also when deleted while waiting).
            Forbidden: neither the queue's owner nor an admin.
        """
        fields: dict[str, Any] = {"channel": channel}
        if queue is not None:
            fields["queue"] = queue
        fields["max"] = max
        fields["wait"] = wait
        reply = await self._call("pull", fields, extra_time=wait)
        return _parse_list(Message, reply.get("messages"), "pull")

    async def ack(self, channel: str, ids: Iterable[int], queue: str | None = None) -> AckResult:
        """Acknowledge in-flight messages; ids not in flight come back in `unknown`.

        Raises:
            NotFound: no such channel or queue.
            Forbidden: neither the queue's owner nor an admin.
        """
        reply = await self._call("ack", _ack_fields(channel, ids, queue))
        return _parse(AckResult, reply, "ack")

    async def nack(self, channel: str, ids: Iterable[int], queue: str | None = None) -> NackResult:
        """Return in-flight messages to the queue at once (next `attempt` is one higher).

        Raises:
            NotFound: no such channel or queue.
            Forbidden: neither the queue's owner nor an admin.
        """
        reply = await self._call("nack", _ack_fields(channel, ids, queue))
        return _parse(NackResult, reply, "nack")


def _ack_fields(channel: str, ids: Iterable[int], queue: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"channel": channel}
    if queue is not None:
        fields["queue"] = queue
    fields["ids"] = list(ids)
    return fields


def _reply_too_large() -> ConnectionClosed:
    return ConnectionClosed(
        f"reply line exceeds {MAX_REPLY_BYTES} bytes",
        code=ErrorCode.FRAME_TOO_LARGE,
        max=MAX_REPLY_BYTES,
    )


def _protocol_violation(what: str) -> ConnectionClosed:
    log.error("tcpmq server broke the protocol: %s", what)
    return ConnectionClosed(f"server broke the protocol: {what}", code=ErrorCode.INTERNAL)


def _parse(model: type[_M], value: Any, op: str) -> _M:
    # A reply that does not fit the model is the server's bug; keep one
    # exception root instead of letting pydantic's ValidationError escape.
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InternalError(f"malformed {op} reply: {exc}") from exc


def _parse_list(model: type[_M], value: Any, op: str) -> list[_M]:
    if not isinstance(value, list):
        raise InternalError(f"malformed {op} reply: expected a list, got {value!r}")
    return [_parse(model, item, op) for item in value]


class Connecting:
    """What `connect()` returns: await it for a `Client`, or use it with `async with`."""

    def __init__(
        self,
        address: Address,
        *,
        token: str | None,
        user: str | None,
        password: str | None,
        timeout: float,
    ) -> None:
        self._address = address
        self._token = token
        self._user = user
        self._password = password
        self._timeout = timeout
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()

    async def _open(self) -> Client:
        host, port = self._address
        async with asyncio.timeout(self._timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_BYTES)
        try:
            async with asyncio.timeout(self._timeout):
                hello = await _read_greeting(reader)
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            raise
        client = Client(
            reader, writer, address=self._address, server_info=hello, timeout=self._timeout
        )
        try:
            if self._token is not None:
                await client.auth(self._token)
            elif self._user is not None and self._password is not None:
                await client.login(self._user, self._password)
        except BaseException:
            await client.close()
            raise
        return client


async def _read_greeting(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        line = await reader.readline()
    except ValueError:
        raise _reply_too_large() from None
    if not line.endswith(b"\n"):
        raise ConnectionClosed("server closed the connection before its greeting")
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise _protocol_violation(f"undecodable greeting {line[:200]!r}") from None
    if isinstance(frame, dict):
        if frame.get("event") == "hello":
            return frame
        if frame.get("event") == "bye":
            # Sent instead of the greeting, e.g. when max_connections is reached.
            raise ConnectionClosed.from_bye(frame.get("error"))
    raise _protocol_violation(f"expected a hello greeting, got {line[:200]!r}")


def connect(
    url: str = DEFAULT_URL,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
) -> Connecting:
    """Open a connection to a tcpmq server, authenticating if credentials are given.

    Use as `async with connect(url, token=...) as client:` (closed on exit) or
    `client = await connect(url)` (call `client.close()` yourself). With
    `token` the connection sends `auth`; with `user` and `password`, `login`;
    with neither it stays unauthenticated (only `ping`, `auth`, `login` work).
    `timeout` bounds the TCP connect, the greeting, and each later call.

    Raises:
        ValueError: a malformed URL, or conflicting or incomplete credentials
            (raised at once, before connecting).
        OSError: the TCP connection could not be made.
        TimeoutError: the server did not answer within `timeout`.
        ConnectionClosed: the server sent `bye` instead of its greeting.
        AuthFailed: the token or the user and password were refused.
    """
    address = parse_url(url)
    if token is not None and (user is not None or password is not None):
        raise ValueError("give either a token or a user and password, not both")
    if (user is None) != (password is None):
        raise ValueError("login needs both user and password")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return Connecting(address, token=token, user=user, password=password, timeout=timeout)
