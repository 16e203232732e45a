"""One fuzzing connection: send batches of fuzz lines over a real socket, check every reply.

Theory of operation: a batch is some fuzz lines followed by a `ping` with a
fresh id. `split_lines` (the oracle) says which lines of the batch's bytes must
get a reply; the batch is written in one piece, in random chunks or byte by
byte while its replies are read, and must come back as exactly that many
reply lines, in order, ending with the pong. Each reply is checked:

- it is one JSON object: a reply (`ok` true or false) or a `bye` event with a
  code protocol.md lists; after a `bye` the server closes;
- an error carries a known `ErrorCode`, never `internal` (counted, and the
  line that caused it kept, rather than ending the run);
- an echoed `id` is the id of the line at that position, so replies that are
  lost, doubled or out of order cannot balance out.

A line beyond `max_frame_bytes` (before authentication, beyond the lower
`max_auth_frame_bytes`) must get `frame_too_large` and the close, with
nothing after it. An episode (one connection) ends by a plain close, by
half-closing after an unterminated line (every complete line is still
answered, then the server closes), or by vanishing in the middle of a batch.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ErrorCode
from .frames import FrameMaker, split_lines

# `bye` codes protocol.md documents (and the connection-limit one, sent before the greeting).
BYE_CODES = frozenset({"shutting_down", "unauthenticated", "auth_failed", "limit_exceeded"})
ERROR_CODES = frozenset(code.value for code in ErrorCode)
# No reply, not even to a long line behind a login's hash, takes this long on loopback.
REPLY_TIMEOUT = 30.0
AUTH_TRIES = 10
# Lines that got `internal` kept for the report (each is at most a frame long).
KEEP_INTERNAL = 20


class ContractBroken(Exception):
    """A reply broke protocol.md's contract (`internal` replies are counted, not raised)."""


@dataclass
class Tally:
    """What a fuzz run sent and got, over all its connections."""

    frames: int = 0  # request lines answered (fuzz lines and pings)
    bytes_sent: int = 0
    batches: int = 0
    connections: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    byes: Counter[str] = field(default_factory=Counter)
    internal: int = 0
    internal_lines: list[bytes] = field(default_factory=list)


TokenSource = Callable[[bool], Awaitable[str]]
"""Gives a token for the fuzz user; called with True when the last one was refused."""


class FuzzSession:
    """Fuzzes one server address with lines from `corpus`, one connection after another."""

    def __init__(
        self,
        host: str,
        port: int,
        maker: FrameMaker,
        corpus: list[bytes],
        tokens: TokenSource,
        tally: Tally,
        *,
        batch_size: int = 200,
        auth_frame_bytes: int | None = None,
    ) -> None:
        self.host = host
        # The frame limit before authentication (the server's max_auth_frame_bytes).
        self.auth_frame_bytes = min(
            auth_frame_bytes or maker.max_frame_bytes, maker.max_frame_bytes
        )
        self._authenticated = False
        self.port = port
        self.maker = maker
        self.rng: random.Random = maker.rng
        self.corpus = corpus
        self.tokens = tokens
        self.tally = tally
        self.batch_size = batch_size
        self._pong = 0

    async def episode(self, batches: int, stop: Callable[[], bool] = lambda: False) -> None:
        """One connection: authenticate or not, send up to `batches` batches (fewer once
        `stop()` says so), end it somehow.

        Raises:
            ContractBroken: a reply broke the contract.
            OSError, TimeoutError: the server went away or stopped answering.
        """
        rng = self.rng
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)
        self.tally.connections += 1
        try:
            hello = orjson.loads(await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT))
            if hello.get("event") != "hello":
                raise ContractBroken(f"greeting is not hello: {hello!r}")
            self._authenticated = False
            if rng.random() < 0.6:
                await self._authenticate(reader, writer)
                self._authenticated = True
            for _ in range(batches):
                if stop():
                    return
                lines = self._lines(rng.randint(1, self.batch_size))
                ending = rng.random()
                if ending < 0.05:
                    # Half-close after an unterminated line: the rest is still answered.
                    await self._batch(reader, writer, lines, tail=rng.choice(self.corpus)[:50])
                    return
                if ending < 0.08:
                    # Vanish in the middle of a batch, replies unread.
                    stream = self._stream(lines)
                    writer.write(stream[: rng.randrange(len(stream))])
                    return
                if not await self._batch(reader, writer, lines):
                    return  # the server closed the connection, as it had to
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        refused = False
        # Other connections' fuzz lines may revoke the user's tokens at any
        # moment, a fresh one's too: a few tries, each with a new token.
        for _ in range(AUTH_TRIES):
            token = await self.tokens(refused)
            writer.write(orjson.dumps({"op": "auth", "token": token}) + b"\n")
            reply = orjson.loads(await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT))
            if reply.get("ok") is True:
                return
            refused = True
        raise ContractBroken(f"{AUTH_TRIES} fresh tokens were refused: {reply!r}")

    def _lines(self, count: int) -> list[bytes]:
        rng = self.rng
        corpus = self.corpus
        maker = self.maker
        lines: list[bytes] = []
        for _ in range(count):
            roll = rng.random()
            if roll < 0.8:
                lines.append(rng.choice(corpus))
            elif roll < 0.92:
                lines.append(maker.mutate(rng.choice(corpus)))
            else:
                lines.append(maker.frame())
        return lines

    def _stream(self, lines: list[bytes]) -> bytes:
        ending = b"\r\n" if self.rng.random() < 0.1 else b"\n"
        return ending.join(lines) + ending

    async def _batch(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        lines: list[bytes],
        tail: bytes | None = None,
    ) -> bool:
        """Send `lines` and a ping (or, with `tail`, the tail and EOF); check every reply.

        Returns whether the connection is still open.
        """
        self._pong += 1
        pong_id = f"pong-{self._pong}"
        stream = self._stream(lines)
        if tail is None:
            stream += b'{"op":"ping","id":"' + pong_id.encode() + b'"}\n'
        else:
            stream += tail.replace(b"\n", b"")
        limit = self.maker.max_frame_bytes if self._authenticated else self.auth_frame_bytes
        framing = split_lines(stream, limit)
        expected = framing.lines
        send = asyncio.ensure_future(self._send(writer, stream, eof=tail is not None))
        try:
            replies, reset = await asyncio.wait_for(
                self._read(reader, len(expected) + framing.too_large), REPLY_TIMEOUT
            )
        except TimeoutError:
            raise TimeoutError(
                f"no reply within {REPLY_TIMEOUT:g} s (the server stopped answering ping?)"
            ) from None
        finally:
            if not send.done():
                send.cancel()
            with suppress(asyncio.CancelledError, OSError):
                await send
        self.tally.batches += 1
        self.tally.bytes_sent += len(stream)
        if reset and not framing.too_large:
            raise ContractBroken("the server reset the connection")
        # Closing on a line that is too long may leave some of it unread, and
        # the kernel answers that with a reset that can overtake the replies.
        open_after = check_replies(
            self.tally, expected, replies, framing.too_large, complete=not reset
        )
        if tail is None and open_after and not framing.too_large:
            last = orjson.loads(replies[-1])
            if last != {"ok": True, "id": pong_id}:
                raise ContractBroken(f"expected the pong {pong_id!r}, got {last!r}")
            return True
        # The server must close now: EOF was sent, a bye came, or a line was too long.
        rest = await asyncio.wait_for(_read_rest(reader), REPLY_TIMEOUT)
        if rest:
            raise ContractBroken(f"bytes after the last expected reply: {rest[:200]!r}")
        return False

    async def _send(self, writer: asyncio.StreamWriter, stream: bytes, eof: bool) -> None:
        rng = self.rng
        how = rng.random()
        if how < 0.8 or len(stream) > 200_000:
            writer.write(stream)
        elif how < 0.95 or len(stream) > 4000:
            at = 0
            while at < len(stream):
                step = rng.randint(1, 64)
                writer.write(stream[at : at + step])
                at += step
                await writer.drain()
        else:
            # Byte by byte, each sent at once (TCP_NODELAY): the line arrives in pieces.
            for at in range(len(stream)):
                writer.write(stream[at : at + 1])
                await writer.drain()
        await writer.drain()
        if eof:
            writer.write_eof()

    async def _read(self, reader: asyncio.StreamReader, count: int) -> tuple[list[bytes], bool]:
        """Up to `count` reply lines; fewer only if the connection ends (or a bye comes) first.

        Returns the lines and whether the connection was reset.
        """
        replies: list[bytes] = []
        buffer = b""
        while len(replies) < count:
            try:
                chunk = await reader.read(1 << 20)
            except OSError:  # a reset, or our write after it failing (EPIPE, ENOTCONN)
                return replies, True
            if not chunk:
                if buffer:
                    raise ContractBroken(f"unterminated reply: {buffer[:200]!r}")
                return replies, False
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            replies.extend(complete)
            if b'"event"' in chunk and any(line.startswith(b'{"event"') for line in complete):
                break
        if buffer or len(replies) > count:
            raise ContractBroken(f"more replies than request lines: {buffer[:200]!r}")
        return replies, False


def check_replies(
    tally: Tally, expected: list[bytes], replies: list[bytes], too_large: bool, complete: bool
) -> bool:
    """Check each reply against its request line, counting codes in `tally`.

    `too_large`: a line beyond the frame limit followed `expected`; `complete`:
    the replies were read to the end (no reset cut them short).
    Returns whether the connection stays open.

    Raises:
        ContractBroken: a reply is missing, extra, malformed, out of order or
            has an unknown code; replies come after a `bye`.
    """
    codes = tally.codes
    for index, raw in enumerate(replies):
        try:
            reply: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ContractBroken(f"a reply is not JSON: {raw[:200]!r}") from None
        if type(reply) is not dict:
            raise ContractBroken(f"a reply is not an object: {raw[:200]!r}")
        if "event" in reply:
            code = _code(reply)
            if reply["event"] != "bye" or code not in BYE_CODES:
                raise ContractBroken(f"unexpected event: {raw[:200]!r}")
            tally.byes[code] += 1
            if index != len(replies) - 1:
                raise ContractBroken("replies after a bye")
            return False
        if index == len(expected) and not too_large:
            raise ContractBroken(f"more replies than request lines: {raw[:200]!r}")
        if index == len(expected):
            # The one reply to the line that was too long, without an id.
            if _code(reply) != "frame_too_large" or "id" in reply:
                raise ContractBroken(f"expected frame_too_large, got {raw[:200]!r}")
            codes["frame_too_large"] += 1
            tally.frames += 1
            return False
        line = expected[index]
        ok = reply.get("ok")
        if ok is False:
            code = _code(reply)
            if code not in ERROR_CODES:
                raise ContractBroken(f"unknown error code: {raw[:200]!r}")
            codes[code] += 1
            if code == "internal":
                tally.internal += 1
                if len(tally.internal_lines) < KEEP_INTERNAL:
                    tally.internal_lines.append(line)
        elif ok is True:
            codes["ok"] += 1
        else:
            raise ContractBroken(f"a reply without ok: {raw[:200]!r}")
        if "id" in reply:
            _check_echoed_id(reply["id"], line)
        tally.frames += 1
    if complete and len(replies) < len(expected) + too_large:
        raise ContractBroken(
            f"{len(expected) + too_large} request lines, {len(replies)} replies, no bye"
        )
    return not too_large


def _code(reply: dict[str, Any]) -> str | None:
    error = reply.get("error")
    code = error.get("code") if type(error) is dict else None
    return code if type(code) is str else None


def _check_echoed_id(echoed: object, line: bytes) -> None:
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError:
        request = None
    if type(request) is not dict or request.get("id") != echoed or "id" not in request:
        raise ContractBroken(f"reply id {echoed!r} is not the id of its line {line[:200]!r}")


async def _read_rest(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read()
    except OSError:
        return b""
