"""TLS between a client's socket and its `Connection`, with half-close.

Theory of operation: the main listener makes a `TlsLayer` per accepted
socket when TLS is on. The layer is the socket's protocol and, once the
handshake is done, the transport of a new `Connection` (made then, so a
connection that never finishes its handshake never greets or counts as
open). Ciphertext read from the socket goes into an `ssl.SSLObject` through
memory BIOs, and the plaintext it yields goes to the connection's
`data_received`; what the connection writes is encrypted and written to the
socket at once, in one piece.

Why not the event loop's own TLS (`create_server(ssl=...)`): there, a
client that ends its sending side (close_notify, or a FIN) ends the whole
connection, and a reply made after that moment is dropped: a `login` whose
password is still being hashed, for one. tcpmq's rule is that every request
read is answered before the close, over TLS as over TCP (see
connection.py). Here the client's close_notify, or a FIN, is the
connection's `eof_received`, and the server's side stays open until the
connection closes it; the layer then sends its close_notify after the last
reply and closes the socket without waiting for the client's (TLS 1.3
allows a half-closed connection, and no side need wait for the other's
close_notify). A FIN without close_notify could be a cut connection rather
than a client that is done; either way the requests read are answered and
the connection closes, which is all a truncation can make the server do.

Bounds: the handshake must finish within the handshake timeout
(`Limits.auth_timeout`), so a client that connects and never speaks holds
its socket no longer than an unauthenticated one does; and at most
`Handshakes.limit` (`max_connections`) handshakes run at once: a socket
beyond that is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, cast

from . import audit
from .tls import describe_ssl_error

# Plaintext taken from the TLS object per read call: a few records' worth.
_READ_SIZE = 256 * 1024


class Handshakes:
    """The TLS handshakes in progress on one listener, bounded in number."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: set[TlsLayer] = set()

    def begin(self, layer: TlsLayer) -> bool:
        if len(self.running) >= self.limit:
            return False
        self.running.add(layer)
        return True

    def end(self, layer: TlsLayer) -> None:
        self.running.discard(layer)

    def abort_all(self) -> None:
        """Drop every handshake in progress (the server is stopping)."""
        for layer in list(self.running):
            layer.abort()


class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """The socket's protocol below, the connection's transport above."""

    def __init__(
        self,
        context: ssl.SSLContext,
        make_protocol: Callable[[], asyncio.Protocol],
        handshakes: Handshakes,
        handshake_timeout: float,
    ) -> None:
        asyncio.Transport.__init__(self)
        self._context = context
        self._make_protocol = make_protocol
        self._handshakes = handshakes
        self._handshake_timeout = handshake_timeout
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._raw: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        # Set once the layer sends nothing more (closing, closed or failed).
        self._closing = False
        # Set once the client's end of requests (close_notify or FIN) was passed on.
        self._eof = False
        # Set by write_eof: close_notify sent, the client's input is only discarded.
        self._lingering = False

    # -- the socket's protocol --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self._raw = raw = cast(asyncio.Transport, transport)
        peer = raw.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self._handshakes.begin(self):
            audit.event("connection_refused", peer=self._peer, reason="tls_handshakes")
            self._closing = True
            raw.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._closing and self._app is None:
            return  # a failed handshake: the socket is closing
        if self._lingering:
            self._discard(data)
            return
        self._incoming.write(data)
        if self._app is None:
            self._handshake()
            if self._app is None:
                return
        self._read()

    def eof_received(self) -> bool:
        if self._app is None:
            self._end_handshake()
            return False  # gone during the handshake: close
        self._end_of_requests()
        # Keep the socket open: the connection still sends its replies.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_handshake()
        self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # -- handshake --------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._send()
            return
        except ssl.SSLError as exc:
            self._fail("tls_failed", exc)
            return
        self._end_handshake()
        self._send()  # the server's last flight, and TLS 1.3 session tickets
        app = self._app = self._make_protocol()
        app.connection_made(self)

    def _end_handshake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handshakes.end(self)

    def _handshake_expired(self) -> None:
        self._timer = None
        audit.event("tls_failed", peer=self._peer, reason="no handshake in time")
        self.abort()

    def _fail(self, event: str, exc: ssl.SSLError) -> None:
        """A handshake or record error: send the TLS alert, if any, and close."""
        audit.event(event, peer=self._peer, reason=describe_ssl_error(exc))
        self._end_handshake()
        self._send()
        self._closing = True
        if self._raw is not None:
            self._raw.close()

    # -- reading ----------------------------------------------------------

    def _read(self) -> None:
        if self._eof:
            return  # nothing follows a close_notify
        sslobj = self._ssl
        incoming = self._incoming
        chunks: list[bytes] = []
        eof = False
        try:
            while incoming.pending or sslobj.pending():
                chunk = sslobj.read(_READ_SIZE)
                if not chunk:
                    eof = True  # close_notify
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as exc:
            self._fail("tls_failed", exc)
            return
        app = self._app
        assert app is not None
        if chunks:
            app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self._outgoing.pending:
            self._send()  # e.g. the answer to a TLS 1.3 key update
        if eof:
            self._end_of_requests()

    def _end_of_requests(self) -> None:
        if self._eof or self._app is None:
            return
        self._eof = True
        if not self._app.eof_received():
            self.close()

    # -- the connection's transport ------------------------------------------

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if self._closing or self._lingering:
            return
        try:
            # Memory BIOs take all of it, but the API allows a partial write.
            written = self._ssl.write(data)
            while written < len(data):
                written += self._ssl.write(memoryview(data)[written:])
        except ssl.SSLError as exc:
            self._fail("tls_failed", exc)
            return
        self._send()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """End the server's side (close_notify, then a FIN) and keep reading.

        The connection's lingering close: what the client still sends is
        discarded, and its close_notify or FIN ends the linger (see
        `_discard`), so unread input never turns into a reset that would
        destroy the replies just sent.
        """
        if self._closing or self._lingering:
            return
        self._lingering = True
        with contextlib.suppress(ssl.SSLError):  # SSLWantReadError: the client's is not awaited
            self._ssl.unwrap()
        self._send()
        if self._raw is not None and self._raw.can_write_eof():
            self._raw.write_eof()

    def _discard(self, data: bytes) -> None:
        """Lingering: drop the client's records, and pass on its close_notify as EOF."""
        if self._eof:
            return
        self._incoming.write(data)
        try:
            self._ssl.unwrap()  # completes once the client's close_notify is read
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError:
            # Application data behind our close_notify: TLS refuses to go on
            # reading it, so the linger ends with the FIN or close_linger.
            self._incoming.read()
            return
        self._end_of_requests()

    def close(self) -> None:
        """Send what is written, then close_notify, then close the socket."""
        if self._closing:
            return
        self._closing = True
        # Raises once close_notify is out, wanting the client's: not waited for.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._send()
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._end_handshake()
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw is None or self._raw.is_closing()

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        pending = self._outgoing.pending
        return pending + (self._raw.get_write_buffer_size() if self._raw is not None else 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return self._ssl.getpeercert() if self._app is not None else default
        if name == "cipher":
            return self._ssl.cipher()
        return self._raw.get_extra_info(name, default) if self._raw is not None else default

    def _send(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)
