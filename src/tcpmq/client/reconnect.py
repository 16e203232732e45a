"""Keeping a client connected: the connection of the moment, and its replacement when lost.

Theory of operation: a `Link` holds the client's current `Connection`. When
that connection ends, the link either ends too (no `Backoff`, `close()`
called, or a reason that another connection would not cure) or starts one
reconnect task. The task waits a backoff delay, connects, authenticates with
the client's credentials and installs the new connection; until then calls
wait in `ready()` for the change (bounded by their own deadline), then go out
on the new connection: `call()` is that request path, for the client's typed
methods and its consumers alike. Calls that were in flight on the lost connection are
not resent: they raise `ConnectionLost`, since the server may or may not
have carried them out.

Why some ends are final: `auth_failed` (the user was deleted) and
`unauthenticated` (the server gave up waiting for authentication) would
recur on every new connection, as would a token or password the server now
refuses. Everything else (`shutting_down`, EOF, resets, refused connects,
`limit_exceeded`) is worth retrying: the server may be restarting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuthFailed, ErrorCode, TcpmqError
from ..models import LoginResult
from .connection import Connection, Reply, open_connection, parse
from .errors import ConnectionClosed

log = logging.getLogger(__name__)

# Connection ends that another connection would not cure.
_FINAL_CODES = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.UNAUTHENTICATED})

# A login token this close to expiry is not worth an `auth` that may be refused.
_TOKEN_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """When to try again after losing the connection: exponential backoff with jitter.

    Attempt n (from 1) waits `min(max_delay, initial * multiplier ** (n - 1))`
    seconds, less a random part of up to `jitter` of that, so that clients
    cut off together do not all come back in the same instant. The first
    attempt waits too: a server that has just said `shutting_down` is not
    back yet. `max_attempts` None tries forever; otherwise the client ends
    after that many failed attempts in a row.
    """

    initial: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.max_delay:
            raise ValueError("need 0 < initial <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1, or None")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt `attempt` (1 for the first), `rand` in [0, 1).

        Never more than `max_delay`, never less than `(1 - jitter)` of the
        capped exponential.
        """
        try:
            grown = self.initial * float(self.multiplier) ** (attempt - 1)
        except OverflowError:
            grown = self.max_delay
        return min(grown, self.max_delay) * (1.0 - self.jitter * rand)


@dataclass(slots=True)
class Credentials:
    """How to authenticate a new connection: a token, or a user and password."""

    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ttl: int | None = None
    # The token of the last login, used instead of another login while it is
    # valid: a login costs the server a deliberately slow password hash.
    login_token: str | None = field(default=None, repr=False)
    login_expires_at: float | None = None

    def remember_login(self, result: LoginResult) -> None:
        self.login_token = result.token
        self.login_expires_at = result.expires_at


async def authenticate(connection: Connection, credentials: Credentials, deadline: float) -> str:
    """Authenticate `connection` as `credentials` say, by `deadline`; return how, for the log.

    Raises:
        AuthFailed: the token, or the user and password, were refused.
        TcpmqError, TimeoutError: as for any call.
    """
    if credentials.token is not None:
        await connection.call("auth", {"token": credentials.token}, deadline)
        return "with its token"
    if credentials.user is None or credentials.password is None:
        return "without credentials"
    expires_at = credentials.login_expires_at
    if credentials.login_token is not None and (
        expires_at is None or expires_at > time.time() + _TOKEN_MARGIN
    ):
        try:
            await connection.call("auth", {"token": credentials.login_token}, deadline)
        except AuthFailed:
            pass  # e.g. the server's secret changed: log in again
        else:
            return "with the token of its last login"
    fields: dict[str, Any] = {"user": credentials.user, "password": credentials.password}
    if credentials.ttl is not None:
        fields["ttl"] = credentials.ttl
    reply = await connection.call("login", fields, deadline)
    credentials.remember_login(parse(LoginResult, reply, "login"))
    return "by logging in again"


class Link:
    """The client's connection of the moment; with a `Backoff`, replaced when it is lost."""

    def __init__(
        self, connection: Connection, timeout: float, *, backoff: Backoff | None = None
    ) -> None:
        self.connection = connection
        self.address = connection.address
        self.tls = connection.tls
        #: Seconds a call may take (see `call`); also bounds connecting and authenticating.
        self.timeout = timeout
        #: What a new connection authenticates with (kept by the client's auth/login).
        self.credentials: Credentials | None = None
        #: None: a lost connection ends the client.
        self.backoff = backoff
        self._loop = asyncio.get_running_loop()
        self._final: ConnectionClosed | None = None
        self._closed_by_client = False
        # Resolved when a waiting call should look again: a new connection, or the end.
        self._changed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        connection.on_close = self._lost
        if connection.closed:
            self._lost(connection)

    @property
    def closed(self) -> bool:
        """True once the client has ended for good."""
        return self._final is not None

    @property
    def close_reason(self) -> ConnectionClosed | None:
        return self._final

    @property
    def closed_by_client(self) -> bool:
        return self._closed_by_client

    async def ready(self, deadline: float | None) -> Connection:
        """The open connection, waiting (until `deadline`, None: no limit) while reconnecting.

        Raises:
            ConnectionClosed: the client has ended (why is the exception's `code`).
            TimeoutError: still reconnecting at `deadline`.
        """
        while True:
            if self._final is not None:
                raise self._final.clone()
            connection = self.connection
            if not connection.closed:
                return connection
            changed = self._changed
            assert changed is not None, "a lost connection either ends the link or reconnects"
            try:
                if deadline is None:
                    await asyncio.shield(changed)
                else:
                    async with asyncio.timeout_at(deadline):
                        await asyncio.shield(changed)
            except TimeoutError:
                host, port = self.address
                raise TimeoutError(
                    f"not reconnected to {host}:{port} within the client's timeout;"
                    " the request was not sent"
                ) from None

    async def call(self, op: str, fields: dict[str, Any], extra_time: float = 0.0) -> Reply:
        """Pipeline one request on the open connection and return its `ok: true` reply.

        The deadline is set now: `timeout` seconds, plus `extra_time` (a
        pull's wait). While reconnecting, the request waits for the new
        connection within that deadline.

        Raises:
            TcpmqError: the matching subclass for an `ok: false` reply.
            ConnectionLost: the connection ended before the reply came.
            ConnectionClosed: the client has ended; nothing was sent.
            TimeoutError: no reply (or no connection) by the deadline.
        """
        deadline = self._loop.time() + self.timeout + extra_time
        while True:
            connection = self.connection
            if connection.closed:
                connection = await self.ready(deadline)
            try:
                call = connection.send(op, fields, deadline)
            except ConnectionClosed:
                continue  # not sent; ready() waits for the next connection or raises
            return await connection.wait(call)

    async def wait_closed(self) -> None:
        await self._ended.wait()
        await self.connection.wait_closed()

    async def close(self) -> None:
        self._closed_by_client = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if self._final is None and self.connection.closed:
            self._finish(ConnectionClosed("connection closed by the client"))
        await self.connection.close()  # ends the link through _lost if still open

    # -- losing and replacing the connection ------------------------------------

    def _lost(self, connection: Connection) -> None:
        if connection is not self.connection or self._final is not None:
            return
        reason = connection.close_reason
        assert reason is not None
        if self._closed_by_client or self.backoff is None:
            self._finish(reason)
            return
        host, port = self.address
        if reason.code in _FINAL_CODES:
            log.error("tcpmq connection to %s:%d ended for good: %s", host, port, reason.message)
            self._finish(reason)
            return
        log.warning("tcpmq connection to %s:%d lost (%s); reconnecting", host, port, reason.message)
        self._changed = self._loop.create_future()
        self._task = self._loop.create_task(
            self._reconnect(self.backoff), name=f"tcpmq-reconnect-{host}:{port}"
        )

    async def _reconnect(self, backoff: Backoff) -> None:
        try:
            await self._retry(backoff)
        except Exception as exc:
            # A bug; never leave calls waiting for a connection that will not come.
            log.exception("tcpmq reconnect failed")
            self._finish(ConnectionClosed(f"reconnect failed: {exc!r}", code=ErrorCode.INTERNAL))

    async def _retry(self, backoff: Backoff) -> None:
        host, port = self.address
        attempt = 0
        while True:
            attempt += 1
            # A real wait, not a synchronisation: this is the backoff.
            await asyncio.sleep(backoff.delay(attempt, random.random()))
            try:
                connection, how = await self._open()
            except AuthFailed as exc:
                self._give_up(
                    ConnectionClosed(
                        f"reconnected to {host}:{port} but authentication failed: {exc.message}",
                        code=ErrorCode.AUTH_FAILED,
                    )
                )
                return
            except (OSError, TimeoutError, TcpmqError) as exc:
                if backoff.max_attempts is not None and attempt >= backoff.max_attempts:
                    self._give_up(
                        ConnectionClosed(
                            f"could not reconnect to {host}:{port} in {attempt} attempts;"
                            f" the last error: {_describe(exc)}"
                        )
                    )
                    return
                log.info(
                    "tcpmq reconnect attempt %d to %s:%d failed: %s",
                    attempt,
                    host,
                    port,
                    _describe(exc),
                )
                continue
            self._install(connection)
            log.info(
                "tcpmq reconnected to %s:%d after %d attempt(s), authenticated %s",
                host,
                port,
                attempt,
                how,
            )
            return

    async def _open(self) -> tuple[Connection, str]:
        connection = await open_connection(self.address, self.timeout, self.tls)
        try:
            how = "without credentials"
            if self.credentials is not None:
                deadline = self._loop.time() + self.timeout
                how = await authenticate(connection, self.credentials, deadline)
            reason = connection.close_reason
            if reason is not None:  # it ended right after authenticating
                raise reason.clone()
        except BaseException:
            await connection.close()
            raise
        return connection, how

    def _install(self, connection: Connection) -> None:
        self.connection = connection
        connection.on_close = self._lost
        self._wake()

    def _give_up(self, reason: ConnectionClosed) -> None:
        host, port = self.address
        log.error("tcpmq client of %s:%d gives up: %s", host, port, reason.message)
        self._finish(reason)

    def _finish(self, reason: ConnectionClosed) -> None:
        if self._final is not None:
            return
        self._final = reason
        self._wake()
        self._ended.set()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
