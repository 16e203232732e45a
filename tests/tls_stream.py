"""A TLS client stream for tests that can half-close: `write_eof()` sends close_notify.

asyncio's own TLS has no half-close (`write_eof` raises), but the raw
protocol tests end their sending side and read the replies that follow, as
`nc -N` does. This client does over TLS what TCP does with a FIN: it sends
close_notify after everything written, and reads on until the server closes.
It is written on `ssl.SSLObject` independently of the server's TLS layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, cast


class _ClientTls(asyncio.Protocol, asyncio.Transport):
    """The TCP socket's protocol below; a `StreamReaderProtocol`'s transport above."""

    def __init__(
        self,
        context: ssl.SSLContext,
        hostname: str,
        app: asyncio.Protocol,
        handshake: asyncio.Future[None],
    ) -> None:
        asyncio.Transport.__init__(self)
        self._context = context
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        self._app = app
        self._handshake_done = handshake
        self._raw: asyncio.Transport | None = None
        self._connected = False
        self._eof = False
        self._closing = False

    # -- below: the TCP socket ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._connected:
            self._handshake()
            if not self._connected:
                return
        self._read()

    def eof_received(self) -> bool:
        self._app_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._connected:
            self._app.connection_lost(exc)
        elif not self._handshake_done.done():
            self._handshake_done.set_exception(exc or ConnectionResetError("closed in handshake"))

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()
            self._handshake_done.set_exception(exc)
            self.abort()
            return
        self._flush()
        self._connected = True
        self._app.connection_made(self)
        self._handshake_done.set_result(None)

    def _read(self) -> None:
        chunks: list[bytes] = []
        eof = False
        try:
            while self._incoming.pending or self._ssl.pending():
                chunk = self._ssl.read(65536)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as exc:
            self._app.connection_lost(exc)
            self._connected = False
            self.abort()
            return
        if chunks:
            self._app.data_received(b"".join(chunks))
        self._flush()
        if eof:
            self._app_eof()

    def _app_eof(self) -> None:
        if self._connected and not self._eof:
            self._eof = True
            self._app.eof_received()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # -- above: the stream's transport -------------------------------------

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if self._closing:
            raise ConnectionResetError("write after close")
        self._ssl.write(data)
        self._flush()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """close_notify, after everything written; the server's replies still come."""
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()  # raises, wanting the server's close_notify
        self._flush()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.write_eof()
            if self._raw is not None:
                self._raw.close()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        raw = self._raw.get_write_buffer_size() if self._raw is not None else 0
        return raw + self._outgoing.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sslcontext":
            return self._context
        if name == "ssl_object":
            return self._ssl
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)


async def open_tls_stream(
    host: str, port: int, context: ssl.SSLContext, *, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect over TLS (verifying the certificate names `host`), as `asyncio.open_connection`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    app = asyncio.StreamReaderProtocol(reader)
    handshake: asyncio.Future[None] = loop.create_future()
    layer = _ClientTls(context, host, app, handshake)
    await loop.create_connection(lambda: layer, host, port)
    await handshake
    return reader, asyncio.StreamWriter(layer, app, reader, loop)
