"""The metrics listener: `/metrics`, `/healthz` and `/readyz` over HTTP/1.1.

A small asyncio handler on the broker's own loop, so the collector reads
the broker where it lives (no thread touches its state). It serves GET
only, reads at most `MAX_REQUEST_BYTES` of request head, gives each
request `REQUEST_TIMEOUT` seconds to arrive (the first and each next one
on a kept-alive connection) and holds at most `MAX_CONNECTIONS` at once:
a scraper costs a socket and a few kilobytes.

Access: `/metrics` tells which channels, queues and users' traffic exist,
so beyond loopback it needs a token (`--metrics-token-file`), given as
`Authorization: Bearer TOKEN` or as the password of basic auth (any user
name), compared in constant time. The server refuses to start a metrics
listener beyond loopback without one. `/healthz` (200 while listening)
and `/readyz` (200 when the broker takes traffic, else 503 and why) need
none, so a load balancer's health check can call them; they say nothing
more than up or not and why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import stat
from collections.abc import Callable

from .config import ConfigError, ServerConfig
from .exposure import is_loopback

log = logging.getLogger(__name__)

#: The longest request head (request line and headers) read.
MAX_REQUEST_BYTES = 8192
#: Seconds a request may take to arrive, and a kept-alive connection to stay idle.
REQUEST_TIMEOUT = 10.0
#: Metrics connections open at once; more are closed at once.
MAX_CONNECTIONS = 64
#: The Prometheus text format, as `prometheus_client.generate_latest` writes it.
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def load_metrics_token(config: ServerConfig) -> bytes | None:
    """The token `/metrics` requires, or None; checks that the listener may start.

    Raises:
        ConfigError: a listener beyond loopback without a token, or a token
            file that is missing, empty or open to other users.
    """
    if config.metrics_listen is None:
        if config.metrics_token_file is not None:
            raise ConfigError("--metrics-token-file needs --metrics-listen")
        return None
    host = config.metrics_listen[0]
    path = config.metrics_token_file
    if path is None:
        if not is_loopback(host):
            raise ConfigError(
                f"refusing --metrics-listen on {host or '*'}, not loopback, without "
                "--metrics-token-file: anyone who reaches it would read the broker's metrics"
            )
        return None
    try:
        mode = path.stat().st_mode
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --metrics-token-file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        raise ConfigError(
            f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}); fix: chmod 600 {path}"
        )
    if not token or b"\n" in token or b":" in token:
        raise ConfigError(f"{path}: the token must be one non-empty line without ':'")
    return token


class MetricsListener:
    def __init__(
        self,
        render: Callable[[], bytes],
        readiness: Callable[[], str | None],
        token: bytes | None,
    ) -> None:
        """`render` makes the `/metrics` body; `readiness` says why the broker is not ready."""
        self._render = render
        self._readiness = readiness
        self._token = token
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_BYTES)
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", *self.address)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._handlers.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True if the connection may carry another."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return False  # idle, or too slow: close without a word
        except asyncio.IncompleteReadError:
            return False  # the client closed
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, b"request head too large\n", close=True)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, b"bad request line\n", close=True)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        # A body is never read, so a request that has one ends the connection.
        close = (
            version == "HTTP/1.0"
            or headers.get("connection", "").lower() == "close"
            or "content-length" in headers
            or "transfer-encoding" in headers
        )
        if method != "GET":
            await _respond(writer, 405, b"GET only\n", close=close, extra=[("Allow", "GET")])
            return not close
        path = target.partition("?")[0]
        if path == "/healthz":
            await _respond(writer, 200, b"ok\n", close=close)
        elif path == "/readyz":
            reason = self._readiness()
            if reason is None:
                await _respond(writer, 200, b"ready\n", close=close)
            else:
                await _respond(writer, 503, f"not ready: {reason}\n".encode(), close=close)
        elif path == "/metrics":
            if not self._authorized(headers.get("authorization", "")):
                challenge = [("WWW-Authenticate", 'Bearer realm="tcpmq", Basic realm="tcpmq"')]
                await _respond(writer, 401, b"token required\n", close=close, extra=challenge)
            else:
                body = self._render()
                await _respond(writer, 200, body, close=close, content_type=EXPOSITION_TYPE)
        else:
            await _respond(writer, 404, b"not found: /metrics, /healthz, /readyz\n", close=close)
        return not close

    def _authorized(self, authorization: str) -> bool:
        token = self._token
        if token is None:
            return True
        scheme, _, credentials = authorization.partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = credentials.strip().encode("latin-1")
        elif scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, ValueError):
                decoded = base64.b64decode(credentials.strip(), validate=True)
                given = decoded.partition(b":")[2]
        return hmac.compare_digest(given, token)


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    *,
    close: bool,
    extra: list[tuple[str, str]] | None = None,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close" if close else "keep-alive"),
        *(extra or []),
    ]
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in headers)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
