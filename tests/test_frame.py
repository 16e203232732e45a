"""FrameDecoder on bytes alone: no sockets, no event loop.

The decoder is checked against protocol.md's framing rules: a frame is one
line without its `\\n` (and one `\\r` before it), blank lines (empty, or only
spaces, tabs and `\\r`) are dropped, and a line longer than `max_frame_bytes`
breaks the stream for good. The unterminated tail is refused as soon as it
cannot become an acceptable line any more: more than `max_frame_bytes` bytes,
except that exactly one byte more may wait when it is the `\\r` of a coming
`\\r\\n`.

The property tests compare the decoder, fed in arbitrary pieces, with a
few-line reference model run on the whole input at once.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpmq.errors import ErrorCode, FrameTooLarge, TcpmqError
from tcpmq.frame import FrameDecoder

LIMIT = 16


def feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for piece in pieces:
        frames.extend(decoder.feed(piece))
    return frames


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def assert_too_large(decoder: FrameDecoder, limit: int = LIMIT) -> None:
    error = decoder.error
    assert isinstance(error, FrameTooLarge)
    assert isinstance(error, TcpmqError)
    assert error.code == ErrorCode.FRAME_TOO_LARGE
    wire = error.to_wire()
    assert wire["code"] == "frame_too_large"
    assert wire["max"] == limit
    # Nothing of the broken stream is kept.
    assert decoder.buffered == 0


# --- single frames and basic splitting --------------------------------------


def test_single_frame() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b'{"op":"ping"}\n') == [b'{"op":"ping"}']
    assert decoder.error is None
    assert decoder.buffered == 0


def test_unterminated_line_waits_for_its_newline() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b'{"op"') == []
    assert decoder.buffered == 5
    assert decoder.feed(b':"x"}') == []
    assert decoder.feed(b"\n") == [b'{"op":"x"}']
    assert decoder.buffered == 0
    assert decoder.error is None


def test_many_frames_in_one_feed() -> None:
    decoder = FrameDecoder(LIMIT)
    data = b"".join(b"frame-%d\n" % i for i in range(50))
    assert decoder.feed(data) == [b"frame-%d" % i for i in range(50)]
    assert decoder.buffered == 0


def test_frames_split_one_byte_at_a_time() -> None:
    data = b'{"a":1}\n\r\n{"b":2}\r\n  \n{"c":3}\n{"d"'
    decoder = FrameDecoder(LIMIT)
    assert feed_all(decoder, bytewise(data)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert decoder.buffered == 4
    assert decoder.error is None


def test_a_frame_completes_only_when_its_newline_arrives() -> None:
    decoder = FrameDecoder(LIMIT)
    for byte in bytewise(b"abc\r"):
        assert decoder.feed(byte) == []
    assert decoder.feed(b"\n") == [b"abc"]


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"") == []
    assert decoder.feed(b"ab") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == [b"ab"]


# --- line endings and blank lines -------------------------------------------


def test_crlf_ending_is_stripped() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"one\r\ntwo\nthree\r\n") == [b"one", b"two", b"three"]


def test_only_one_cr_is_stripped_and_inner_cr_is_kept() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"a\r\r\nb\rc\n\rd\n") == [b"a\r", b"b\rc", b"\rd"]


@pytest.mark.parametrize(
    "blank",
    [b"\n", b"\r\n", b" \n", b"\t\n", b"   \t \r\n", b"\r\r\n", b" \r \t\r\n"],
    ids=repr,
)
def test_blank_lines_are_dropped(blank: bytes) -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"a\n" + blank + b"b\n" + blank) == [b"a", b"b"]
    assert decoder.error is None


def test_spaces_around_content_are_kept() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"  {} \t\n") == [b"  {} \t"]


@pytest.mark.parametrize("line", [b"\x0b", b"\x0c", b" \x0c ", b"\x00", b"\x1c"], ids=repr)
def test_other_whitespace_is_not_blank(line: bytes) -> None:
    # protocol.md: blank means empty or only spaces, tabs and \r. A line of
    # form feeds or vertical tabs is not blank: it is a frame (that will get
    # bad_json), not a line to ignore silently.
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(line + b"\n") == [line]


# --- the size limit ---------------------------------------------------------


def test_line_of_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(LIMIT)
    line = b"x" * LIMIT
    assert decoder.feed(line + b"\n" + line + b"\r\n") == [line, line]
    assert decoder.error is None


def test_line_of_exactly_the_limit_is_accepted_byte_by_byte() -> None:
    decoder = FrameDecoder(LIMIT)
    line = b"y" * LIMIT
    assert feed_all(decoder, bytewise(line + b"\r\n")) == [line]
    assert decoder.error is None


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=repr)
def test_complete_line_over_the_limit_is_refused(ending: bytes) -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"x" * (LIMIT + 1) + ending) == []
    assert_too_large(decoder)


def test_line_of_limit_plus_cr_before_crlf_is_refused() -> None:
    # Only one \r is the line ending; a second one is content.
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"x" * LIMIT + b"\r\r\n") == []
    assert_too_large(decoder)


def test_unterminated_tail_over_the_limit_is_refused_without_a_newline() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"x" * (LIMIT + 1)) == []
    assert_too_large(decoder)


def test_unterminated_tail_is_refused_at_the_first_byte_too_many() -> None:
    decoder = FrameDecoder(LIMIT)
    for _ in range(LIMIT):
        assert decoder.feed(b"x") == []
        assert decoder.error is None
    assert decoder.buffered == LIMIT
    assert decoder.feed(b"x") == []
    assert_too_large(decoder)


def test_tail_of_limit_bytes_and_cr_still_waits() -> None:
    decoder = FrameDecoder(LIMIT)
    line = b"z" * LIMIT
    assert decoder.feed(line + b"\r") == []
    assert decoder.error is None
    assert decoder.buffered == LIMIT + 1
    assert decoder.feed(b"\n") == [line]
    assert decoder.error is None
    assert decoder.buffered == 0


def test_tail_of_limit_bytes_and_cr_then_more_content_is_refused() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"z" * LIMIT + b"\r") == []
    assert decoder.error is None
    assert decoder.feed(b"z") == []
    assert_too_large(decoder)


def test_tail_of_limit_bytes_and_two_crs_is_refused() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"z" * LIMIT + b"\r\r") == []
    assert_too_large(decoder)


def test_frames_before_an_oversized_line_are_returned() -> None:
    decoder = FrameDecoder(LIMIT)
    data = b"a\n\nb\r\n" + b"x" * (LIMIT + 1) + b"\nc\nd\n"
    assert decoder.feed(data) == [b"a", b"b"]
    assert_too_large(decoder)


def test_frames_before_an_oversized_tail_are_returned() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"a\nb\n" + b"x" * (LIMIT + 5)) == [b"a", b"b"]
    assert_too_large(decoder)


def test_nothing_comes_out_after_the_error() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"a\n" + b"x" * (LIMIT + 1) + b"\n") == [b"a"]
    error = decoder.error
    assert decoder.feed(b"b\n") == []
    assert decoder.feed(b"\nc\r\nd\n") == []
    assert decoder.feed(b"e") == []
    assert decoder.error is error
    assert decoder.buffered == 0


def test_limits_are_per_line_not_per_feed() -> None:
    decoder = FrameDecoder(LIMIT)
    lines = [b"%02d" % i + b"x" * (LIMIT - 2) for i in range(40)]
    assert decoder.feed(b"\n".join(lines) + b"\n") == lines
    assert decoder.error is None


# --- properties against a reference model -----------------------------------


def is_blank(line: bytes) -> bool:
    # protocol.md: "Blank lines (empty, or only spaces, tabs and \r)".
    return line.strip(b" \t\r") == b""


def reference(data: bytes, limit: int) -> tuple[list[bytes], bool]:
    """What the decoder must return for `data`, however it is split, and whether it fails."""
    *lines, tail = data.split(b"\n")
    frames: list[bytes] = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            return frames, True
        if not is_blank(line):
            frames.append(line)
    # The tail may grow into an acceptable line only while it is at most
    # `limit` bytes, or `limit` bytes and the \r of a coming \r\n.
    tail_too_long = len(tail) > limit + 1 or (len(tail) == limit + 1 and not tail.endswith(b"\r"))
    return frames, tail_too_long


LIMITS = st.integers(min_value=1, max_value=12)
# Pieces that make the interesting cases likely: line endings, blanks, content
# around the limit.
TOKENS = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b" ", b"\t", b"\x0c", b"a", b"{}", b"xyz", b"x" * 5, b"\xff", b"\x00"]
)
STRUCTURED = st.lists(TOKENS, max_size=60).map(b"".join)
INPUTS = st.one_of(st.binary(max_size=200), STRUCTURED)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


@settings(max_examples=400)
@given(data=INPUTS, limit=LIMITS, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_matches_the_reference(data: bytes, limit: int, cuts: list[int]) -> None:
    decoder = FrameDecoder(limit)
    frames = feed_all(decoder, split_at(data, cuts))
    expected_frames, expected_error = reference(data, limit)
    assert frames == expected_frames
    assert (decoder.error is not None) == expected_error
    if expected_error:
        assert_too_large(decoder, limit)
    else:
        assert decoder.buffered == len(data.rsplit(b"\n", 1)[-1])


@settings(max_examples=200)
@given(data=INPUTS, limit=LIMITS)
def test_byte_by_byte_equals_one_feed(data: bytes, limit: int) -> None:
    whole = FrameDecoder(limit)
    frames_whole = whole.feed(data)
    split = FrameDecoder(limit)
    frames_split = feed_all(split, bytewise(data))
    assert frames_split == frames_whole
    assert (split.error is None) == (whole.error is None)


@settings(max_examples=200)
@given(data=INPUTS, more=INPUTS, limit=LIMITS)
def test_frames_are_never_blank_long_or_multiline(data: bytes, more: bytes, limit: int) -> None:
    decoder = FrameDecoder(limit)
    for frame in decoder.feed(data) + decoder.feed(more):
        assert 0 < len(frame) <= limit
        assert b"\n" not in frame
        assert not is_blank(frame)
    if decoder.error is not None:
        assert decoder.feed(b"ok\n") == []


# --- a lower limit enforced by the decoder's user (before authentication) ----


@pytest.mark.parametrize(
    ("tail", "limit", "exceeds"),
    [
        (b"x" * 10, 10, False),
        (b"x" * 11, 10, True),
        (b"x" * 10 + b"\r", 10, False),  # the \r of a coming \r\n does not count
        (b"x" * 10 + b"\r\r", 10, True),
        (b"x" * 11 + b"\r", 10, True),
        (b"", 0, False),
    ],
)
def test_tail_exceeds_counts_as_the_limit_does(tail: bytes, limit: int, exceeds: bool) -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"done\n" + tail) == [b"done"]
    assert decoder.tail_exceeds(limit) is exceeds


def test_refuse_breaks_the_stream_with_the_given_error() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"abc") == []
    error = FrameTooLarge(2, "max_auth_frame_bytes")
    decoder.refuse(error)
    assert decoder.error is error
    assert decoder.buffered == 0
    assert decoder.feed(b"def\nghi\n") == []
    assert error.to_wire() == {
        "code": "frame_too_large",
        "message": "frame exceeds 2 bytes",
        "limit": "max_auth_frame_bytes",
        "max": 2,
    }
