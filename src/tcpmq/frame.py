"""Line framing, free of I/O.

Theory of operation: bytes go in with `feed()`, complete frames come out as a
list. A frame is the content of one line without its `\\n` (and without a `\\r`
just before it); blank lines are dropped because the protocol ignores them.
The decoder keeps only the unterminated tail between calls, and refuses to keep
more than `max_frame_bytes` of it: a peer cannot make the server buffer an
unbounded line while waiting for its newline.

When a line is too long the stream is broken for good (there is no way to find
the next frame boundary without buffering the rest of the giant line), so the
decoder records `error` and returns nothing more. Frames completed before the
oversized line in the same `feed()` are still returned, so replies to them go
out before the `frame_too_large` reply.
"""

from __future__ import annotations

from .errors import FrameTooLarge

__all__ = ["FrameDecoder", "FrameTooLarge"]

_BLANK = b" \t\r"


class FrameDecoder:
    __slots__ = ("_tail", "error", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._tail = b""
        self.error: FrameTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unterminated line held back."""
        return len(self._tail)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, in order.

        After a line longer than `max_frame_bytes` (its `\\r\\n` or `\\n` not
        counted) `error` is set, and this and every later call return only the
        frames that came before it.
        """
        if self.error is not None:
            return []
        if self._tail:
            data = self._tail + data
        lines = data.split(b"\n")
        # The last piece has no newline yet: keep it for the next call.
        self._tail = lines.pop()
        limit = self.max_frame_bytes
        frames: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                return self._fail(frames)
            # Blank (empty, or only spaces, tabs and \r): not a frame, no reply.
            # The first-byte test keeps the strip off the path of real frames.
            if line and (line[0] not in _BLANK or line.strip(_BLANK)):
                frames.append(line)
        if self.tail_exceeds(limit):
            return self._fail(frames)
        return frames

    def tail_exceeds(self, limit: int) -> bool:
        """Whether the unterminated line is already longer than `limit` bytes.

        The tail may still end in "\r" that belongs to a coming "\r\n": that
        byte does not count.
        """
        size = len(self._tail)
        return size > limit + 1 or (size == limit + 1 and not self._tail.endswith(b"\r"))

    def refuse(self, error: FrameTooLarge) -> None:
        """Break the stream with `error`, as a line over the limit does.

        For a lower limit its user enforces for a while (before authentication).
        """
        self.error = error
        self._tail = b""

    def _fail(self, frames: list[bytes]) -> list[bytes]:
        self.refuse(FrameTooLarge(self.max_frame_bytes))
        return frames
