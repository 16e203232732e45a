"""One pipelined connection to a single Redis, for the scripts of the hot path.

redis-py's asyncio client takes a connection from its pool, sends, awaits and
parses each call on its own: about 100 us of Python per call here, more than
the script costs Redis. A node's calls need none of that: every call is
written at once on one connection, replies come back in order (RESP), and
hiredis parses them. So many connections' requests are in flight together, and
a call costs a write and a future.

A call that gets no reply within `timeout` closes the connection: every
pending call then fails with `Unavailable` (its effect unknown), and the next
call connects again. Scripts run by SHA; after a Redis restart without them
(NOSCRIPT) the call is sent again with the script's source.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from typing import Any

import hiredis

from ..errors import Unavailable
from .url import RedisStore


class ReplyError(Exception):
    """An error reply from Redis (its text, with the code: `NOSCRIPT ...`, `OOM ...`)."""


def _command(args: tuple[bytes | str | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class Script:
    """A Lua script known by its SHA1, sent whole only when Redis lacks it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Protocol(asyncio.Protocol):
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._reader = hiredis.Reader(replyError=ReplyError)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._link.waiting
        while (reply := reader.gets()) is not False:
            future = waiting.popleft()[0]
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.lost(exc)


class RedisLink:
    """Calls to one Redis over one connection (see the module docstring)."""

    def __init__(self, store: RedisStore, timeout: float) -> None:
        self._store = store
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        # (future, loop time sent), in the order of the replies to come.
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    async def _connect(self) -> asyncio.Transport:
        async with self._connecting:
            if self._transport is not None:
                return self._transport
            if self._closed:
                raise Unavailable("the store's connection is closed")
            store = self._store
            host, port = store.nodes[0]
            loop = asyncio.get_running_loop()
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Protocol(self),
                        host,
                        port,
                        ssl=ssl.create_default_context() if store.tls else None,
                    ),
                    self._timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise Unavailable(f"the shared store cannot be reached ({exc})") from None
            self._transport = transport
            hello: list[tuple[bytes | str | int, ...]] = []
            if store.password is not None:
                auth = (store.username, store.password) if store.username else (store.password,)
                hello.append(("AUTH", *auth))
            if store.db:
                hello.append(("SELECT", store.db))
            # Written before any other call can be: they all come after on the wire.
            answers = [(str(command[0]), self._send(transport, command)) for command in hello]
            for name, answer in answers:
                reply = await answer
                if isinstance(reply, ReplyError):
                    transport.close()
                    raise Unavailable(f"the shared store refused {name}: {reply}")
            self._arm()
            return transport

    def _send(self, transport: asyncio.Transport, args: tuple[bytes | str | int, ...]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((future, loop.time()))
        transport.write(_command(args))
        return future

    async def call(self, *args: bytes | str | int) -> Any:
        """Send a command; its reply (a `ReplyError` for an error reply)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            transport = await self._connect()
        return await self._send(transport, args)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        reply = await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self.call("EVAL", script.source, len(keys), *keys, *args)
        return reply

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._timeout / 4, self._check)

    def _check(self) -> None:
        """Close a connection whose oldest call has waited past the timeout."""
        self._watchdog = None
        if self._transport is None:
            return
        loop = asyncio.get_running_loop()
        if self.waiting and loop.time() - self.waiting[0][1] > self._timeout:
            self._transport.close()  # connection_lost fails every pending call
            return
        self._arm()

    def lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        error = Unavailable(
            "the connection to the shared store was lost; the request's effect is unknown"
            + (f" ({exc})" if exc else "")
        )
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        transport = self._transport
        if transport is not None:
            transport.close()
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)
