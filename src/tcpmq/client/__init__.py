"""The asyncio client library of tcpmq.

`connect()` opens a connection and returns a `Client` with one typed method
per op; `Client.consume()` iterates over a queue and acks what was
processed; `connect(..., reconnect=True)` replaces a lost connection. One
module per job:

| module | job |
|---|---|
| `url.py` | `tcpmq://host:port` and `tcpmqs://host:port` (TLS) URLs |
| `tls.py` | the TLS settings of a `tcpmqs://` connection |
| `errors.py` | `ConnectFailed`, `ConnectionClosed` (not sent), `ConnectionLost` (outcome unknown) |
| `connection.py` | one TCP connection: pipelined requests, in-order replies, deadlines |
| `reconnect.py` | `Link`, the connection of the moment: requests, backoff, re-authentication |
| `consume.py` | `Client.consume()`: batches, acks, nacks, on the client's `Link` |
| `api.py` | `Client`: the typed methods |
"""

from __future__ import annotations

import ssl
from collections.abc import Generator
from types import TracebackType
from typing import Any

from .api import Client
from .connection import MAX_REPLY_BYTES, open_connection
from .consume import Consumer, Delivery
from .errors import ConnectFailed, ConnectionClosed, ConnectionLost
from .reconnect import Backoff, Link
from .tls import PathLike, client_context
from .url import DEFAULT_URL, Address, parse_server_url, parse_url

__all__ = [
    "DEFAULT_URL",
    "MAX_REPLY_BYTES",
    "Address",
    "Backoff",
    "Client",
    "ConnectFailed",
    "Connecting",
    "ConnectionClosed",
    "ConnectionLost",
    "Consumer",
    "Delivery",
    "connect",
    "parse_url",
]


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
        backoff: Backoff | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._address = address
        self._tls = tls
        self._token = token
        self._user = user
        self._password = password
        self._timeout = timeout
        self._backoff = backoff
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
        connection = await open_connection(self._address, self._timeout, self._tls)
        client = Client(Link(connection, self._timeout, backoff=self._backoff))
        try:
            if self._token is not None:
                await client.auth(self._token)
            elif self._user is not None and self._password is not None:
                await client.login(self._user, self._password)
        except BaseException:
            await client.close()
            raise
        return client


def connect(
    url: str = DEFAULT_URL,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
    reconnect: bool | Backoff = False,
    anonymous: bool = False,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Connecting:
    """Open a connection to a tcpmq server, authenticating if credentials are given.

    Use as `async with connect(url, token=...) as client:` (closed on exit) or
    `client = await connect(url)` (call `client.close()` yourself). With
    `token` the connection sends `auth`; with `user` and `password`, `login`.
    A connection without credentials can only `ping`, `auth` and `login`, so
    it must be asked for with `anonymous=True` (to authenticate later, or to
    check that a server answers); forgetting the credentials fails at once.
    `timeout` bounds the TCP connect, the greeting, and each later call.

    A `tcpmqs://` URL connects over TLS (1.2 or later): the server's
    certificate must be signed by a CA of the system's trust store, or of
    the PEM file `ca`, and name the URL's host. `cert` and `key` (PEM files;
    `key` may be left out when `cert` holds it) present a client certificate
    to a server that requires one. `ssl_context` replaces all three with a
    context of the caller's own. Reconnects use the same settings.

    With `reconnect` (True for the default `Backoff`, or a `Backoff`), a lost
    connection is replaced: after a backoff delay the client connects again
    and authenticates as before (after a `login`, with its token while it is
    valid, else by logging in again). Calls made meanwhile wait for the new
    connection, within their timeout. Calls in flight when the connection
    was lost raise `ConnectionLost` and are never resent: their outcome is
    unknown. The client ends for good (calls raise `ConnectionClosed`) when
    the server says its user was deleted (`auth_failed`), when it refuses the
    credentials on a new connection, after `Backoff.max_attempts` failed
    attempts, or on `close()`. The first connection is made once: if it
    fails, `connect()` raises. Reconnects are logged to `tcpmq.client.reconnect`.

    Raises:
        ValueError: a malformed URL, conflicting, incomplete or missing
            credentials, TLS options with a `tcpmq://` URL, or TLS files that
            cannot be read or are not PEM (raised at once, before connecting).
        ConnectFailed: the TCP connection could not be made (a `TcpmqError`
            and an `OSError`).
        ssl.SSLError: the TLS handshake failed: the server's certificate is
            not trusted or does not name the host (`ssl.SSLCertVerificationError`),
            or the server refused the client's certificate.
        TimeoutError: the server did not answer within `timeout`.
        ConnectionClosed: the server sent `bye` instead of its greeting.
        AuthFailed: the token or the user and password were refused.
    """
    address, tls = parse_server_url(url)
    tls_context = client_context(tls=tls, ca=ca, cert=cert, key=key, ssl_context=ssl_context)
    if token is not None and (user is not None or password is not None):
        raise ValueError("give either a token or a user and password, not both")
    if (user is None) != (password is None):
        raise ValueError("login needs both user and password")
    if anonymous and (token is not None or user is not None):
        raise ValueError("anonymous=True connects without credentials; drop token, user, password")
    if not anonymous and token is None and user is None:
        raise ValueError(
            "connect() needs credentials: token=..., or user=... and password=...;"
            " pass anonymous=True to connect without them (only ping, auth and login work)"
        )
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    backoff: Backoff | None = None
    if isinstance(reconnect, Backoff):
        backoff = reconnect
    elif reconnect:
        backoff = Backoff()
    return Connecting(
        address,
        token=token,
        user=user,
        password=password,
        timeout=timeout,
        backoff=backoff,
        tls=tls_context,
    )
