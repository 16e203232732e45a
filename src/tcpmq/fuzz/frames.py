"""Fuzz frames, and the framing oracle that says which lines must get a reply. No I/O.

`FrameMaker` turns a seeded `random.Random` into request lines of every kind
a hostile or broken client could send: valid ops with wrong or extreme field
values, mutations of valid frames, random bytes, deep nesting, invalid UTF-8,
blank lines and lines near the frame limit. Values are assembled as raw JSON
text, so a frame can hold what no JSON encoder writes (`NaN`, `1e999`, a
lone surrogate escape, a raw control character).

Generating frames one by one in Python would make the fuzzer, not the server,
the bottleneck; `corpus()` makes a few thousand once, and `mutate()` derives
new ones cheaply.

`split_lines` is the oracle: protocol.md's framing rules written out
independently of the server's decoder (frame.py), so the two can disagree.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson

# Names the fuzz frames use: few, so that ops meet existing channels and
# queues often, and so that what the fuzzer creates stays bounded.
CHANNELS = ("c0", "c1", "c2")
QUEUES = ("q0", "q1", "fuzz")
USERS = ("fuzz", "admin", "nobody")
FUZZ_USER = "fuzz"
FUZZ_PASSWORD = "fuzz-password-0123"

_Gen = Callable[[random.Random], bytes]


def _dump(value: object) -> bytes:
    return orjson.dumps(value)


# Values of every type and edge, as raw JSON text: valid JSON of the wrong
# type or out of range, and (below) text that is not JSON at all.
NASTY_JSON: tuple[bytes, ...] = (
    b"null",
    b"true",
    b"false",
    b"0",
    b"-0",
    b"-1",
    b"1.0",
    b"2.5",
    b"-0.0",
    b"1e308",
    b"-1e308",
    b"5e-324",
    b"1e-400",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1" + b"0" * 400,
    b"-" + b"9" * 60,
    b'""',
    b'"5"',
    b'"true"',
    b'"null"',
    b'"\\u0000"',
    b'"\\ud83d\\ude00"',  # a valid surrogate pair
    _dump("\u202e\u200b\ufeff\U0001f4a9 caf\u00e9 \u4e2d\u6587"),
    _dump("\U0010ffff" * 40),
    _dump("a" * 65),  # one over the name limit
    _dump("a" * 64),
    _dump("-starts-with-dash"),
    _dump("has space"),
    _dump("x" * 5000),
    b"[]",
    b"{}",
    b"[1,2,3]",
    b'{"a":1}',
    b"[[[[[[[[[[]]]]]]]]]]",
    b"[" * 129 + b"]" * 129,
    b"[null]",
    b"[-1,0,9223372036854775808]",
    _dump(list(range(1, 1200))),
)
NOT_JSON: tuple[bytes, ...] = (
    b"1e999",  # overflows a double
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"0x10",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b'"\\ud800"',  # lone surrogate escape
    b'"\\udfff\\ud800"',
    b'"\\x41"',  # invalid escape
    b'"\\',
    b'"unterminated',
    b'"tab\there"',  # raw control character in a string
    b'"nul\x00here"',
    b'"bell\x07"',
    b'"\xff\xfe"',  # invalid UTF-8
    b'"\xc0\x80"',  # overlong encoding of NUL
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8
    b'"\xe2\x82"',  # truncated multibyte sequence
    b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
    b"{" * 3,
    b"]",
    b"[1,]",
    b"{,}",
)


def _nasty(rng: random.Random) -> bytes:
    # Mostly JSON, so the request gets past the parser to the field checks.
    return rng.choice(NOT_JSON if rng.random() < 0.15 else NASTY_JSON)


# Single bytes a mutation inserts: JSON's structure, escapes, and what breaks UTF-8.
_INTERESTING_BYTES = b'{}[]",:\\\x00\x01\x1f\x7f\x80\xbf\xc0\xff\r\t 0-e.'


def _choice(*values: object) -> _Gen:
    encoded = [_dump(value) for value in values]
    return lambda rng: rng.choice(encoded)


def _int_between(low: int, high: int) -> _Gen:
    return lambda rng: b"%d" % rng.randint(low, high)


def _float_between(low: float, high: float) -> _Gen:
    return lambda rng: _dump(round(rng.uniform(low, high), 3))


def _data(rng: random.Random, depth: int = 0) -> bytes:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return b"null"
    if kind == 1:
        return _dump(rng.random() < 0.5)
    if kind == 2:
        return b"%d" % rng.randint(-(2**63), 2**63 - 1)
    if kind == 3:
        return _dump(rng.uniform(-1e9, 1e9))
    if kind == 4:
        return _dump("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randrange(12))))
    if kind == 5:
        return _nasty(rng)
    if kind == 6:
        items = [_data(rng, depth + 1) for _ in range(rng.randrange(4))]
        return b"[" + b",".join(items) + b"]"
    pairs = [
        _dump(f"k{rng.randrange(9)}") + b":" + _data(rng, depth + 1)
        for _ in range(rng.randrange(4))
    ]
    return b"{" + b",".join(pairs) + b"}"


def _messages(rng: random.Random) -> bytes:
    return b"[" + b",".join(_data(rng, 1) for _ in range(rng.randint(1, 5))) + b"]"


def _ids(rng: random.Random) -> bytes:
    return _dump([rng.randint(1, 60) for _ in range(rng.randint(1, 8))])


def _token(rng: random.Random) -> bytes:
    # Shaped like a JWT, never one the server signed.
    parts = ("".join(rng.choice("abcXYZ019-_") for _ in range(rng.randint(0, 40))) for _ in "abc")
    return _dump(".".join(parts))


FIELD_VALUES: dict[str, _Gen] = {
    "channel": _choice(*CHANNELS),
    "queue": _choice(*QUEUES),
    "name": _choice(*CHANNELS, *USERS),
    "user": _choice(*USERS),
    # A user.passwd may set either; runner.FuzzUser sets the known one again.
    "password": _choice(FUZZ_PASSWORD, "wrong-password-1"),
    "role": _choice("user", "admin"),
    "op_name": _choice("pull", "publish", "ack", "nope"),
    "token": _token,
    "max": _int_between(1, 50),
    "wait": _float_between(0, 0.05),
    "ack_timeout": _float_between(0.1, 2),
    "ttl": _int_between(1, 3600),
    "ids": _ids,
    "data": _data,
    "messages": _messages,
    "access": _choice("private", "public"),
    "rights": _choice(["publish"], ["subscribe"], ["publish", "subscribe"]),
}


@dataclass(frozen=True, slots=True)
class OpShape:
    """An op's fields (name -> value kind; optional ones end in `?`) and how often to make it."""

    fields: dict[str, str]
    weight: float


_QUEUE_FIELDS = {"channel": "channel", "queue": "queue"}
_CONSUME_FIELDS = {"channel": "channel", "queue?": "queue"}
OPS: dict[str, OpShape] = {
    "ping": OpShape({}, 3),
    "whoami": OpShape({}, 1),
    "server.info": OpShape({}, 1),
    "help": OpShape({"name?": "op_name"}, 1),
    # Each valid login or password change costs a password hash, and a
    # revocation makes the next connections log in again: rare.
    "login": OpShape({"user": "user", "password": "password", "ttl?": "ttl"}, 0.005),
    "auth": OpShape({"token": "token"}, 1),
    "user.create": OpShape({"name": "name", "password": "password", "role?": "role"}, 0.3),
    "user.list": OpShape({}, 0.5),
    "user.get": OpShape({"name": "name"}, 0.5),
    "user.delete": OpShape({"name": "name"}, 0.3),
    "user.passwd": OpShape({"name?": "name", "password": "password"}, 0.005),
    "user.revoke_tokens": OpShape({"name?": "name"}, 0.01),
    "channel.create": OpShape({"name": "channel", "access?": "access"}, 3),
    "channel.list": OpShape({}, 1),
    "channel.get": OpShape({"name": "channel"}, 1),
    "channel.delete": OpShape({"name": "channel"}, 0.7),
    "channel.grant": OpShape({"name": "channel", "user": "user", "rights?": "rights"}, 0.5),
    "channel.revoke": OpShape({"name": "channel", "user": "user", "rights?": "rights"}, 0.3),
    "channel.update": OpShape({"name": "channel", "access": "access"}, 0.3),
    "subscribe": OpShape(
        {"channel": "channel", "queue?": "queue", "ack_timeout?": "ack_timeout"}, 4
    ),
    "queue.list": OpShape({"channel?": "channel"}, 1),
    "queue.delete": OpShape(_QUEUE_FIELDS, 0.7),
    "queue.purge": OpShape(_QUEUE_FIELDS, 1),
    "publish": OpShape({"channel": "channel"}, 20),  # plus data or messages
    "pull": OpShape({**_CONSUME_FIELDS, "max?": "max", "wait?": "wait"}, 10),
    "peek": OpShape({**_CONSUME_FIELDS, "max?": "max"}, 3),
    "ack": OpShape({**_CONSUME_FIELDS, "ids": "ids"}, 6),
    "nack": OpShape({**_CONSUME_FIELDS, "ids": "ids"}, 4),
    "no.such.op": OpShape({}, 1),
}
_OP_NAMES = list(OPS)
_OP_WEIGHTS = [shape.weight for shape in OPS.values()]


class FrameMaker:
    """Makes fuzz request lines (without their line ending) from a seeded generator.

    `max_frame_bytes` is the server's limit: a few lines are made just under,
    at and (rarely, as it ends the connection) just over it.
    """

    def __init__(self, rng: random.Random, max_frame_bytes: int) -> None:
        self.rng = rng
        self.max_frame_bytes = max_frame_bytes
        self._kinds: list[tuple[Callable[[], bytes], float]] = [
            (self.request, 60),
            (lambda: self.mutate(self.request()), 20),
            (self.random_bytes, 6),
            (self.words, 3),
            (self.deep, 4),
            (self.blank, 3),
            (self.near_limit, 1),
            (self.big_publish, 0.5),
        ]
        self._kind_weights = [weight for _, weight in self._kinds]

    def frame(self) -> bytes:
        make = self.rng.choices(self._kinds, self._kind_weights)[0][0]
        return make()

    def corpus(self, size: int) -> list[bytes]:
        return [self.frame() for _ in range(size)]

    def request(self) -> bytes:
        """A request of a real op, most fields valid, some wrong in type or range."""
        rng = self.rng
        op = rng.choices(_OP_NAMES, _OP_WEIGHTS)[0]
        fields = dict(OPS[op].fields)
        if op == "publish":
            roll = rng.random()
            if roll < 0.7:
                fields["data"] = "data"
            elif roll < 0.95:
                fields["messages"] = "messages"
            elif roll < 0.98:
                fields.update(data="data", messages="messages")  # both: bad_request
        parts = [b'"op":' + _dump(op)]
        if rng.random() < 0.7:
            parts.append(b'"id":' + self._id())
        for name, kind in fields.items():
            optional = name.endswith("?")
            name = name.rstrip("?")
            roll = rng.random()
            if (optional and roll < 0.4) or roll < 0.03:
                continue  # omitted (a required one: bad_request)
            value = _nasty(rng) if roll > 0.85 else FIELD_VALUES[kind](rng)
            parts.append(_dump(name) + b":" + value)
        if rng.random() < 0.03:
            parts.append(b'"unknown_field":1')
        if rng.random() < 0.03:
            parts.append(rng.choice(parts))  # a repeated key: the last wins
        if rng.random() < 0.1:
            rng.shuffle(parts)
        return b"{" + b",".join(parts) + b"}"

    def _id(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return b"%d" % rng.randint(-(2**63), 2**63 - 1)
        if roll < 0.85:
            return _dump(f"r{rng.randrange(10**9)}")
        if roll < 0.9:
            return _dump("i" * rng.choice((127, 128, 129)))
        return _nasty(rng)

    def mutate(self, frame: bytes) -> bytes:
        """`frame` with one to four random edits: flips, inserts, deletions, truncation, splices."""
        rng = self.rng
        data = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            if not data:
                data.extend(rng.randbytes(rng.randint(1, 8)))
            at = rng.randrange(len(data))
            edit = rng.randrange(7)
            if edit == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif edit == 1:
                data.insert(at, rng.choice(_INTERESTING_BYTES))
            elif edit == 2:
                del data[at : at + rng.randint(1, 8)]
            elif edit == 3:
                del data[at:]  # truncated
            elif edit == 4:
                end = at + rng.randint(1, 16)
                data[at:at] = data[at:end]
            elif edit == 5:
                data[at] = rng.randrange(256)
            else:
                data[at:at] = self.request()[: rng.randint(1, 40)]
        return bytes(data).replace(b"\n", b" ")

    def random_bytes(self) -> bytes:
        rng = self.rng
        return rng.randbytes(rng.randint(1, 300))  # may hold newlines: several lines

    def words(self) -> bytes:
        """What a person types at nc instead of JSON."""
        rng = self.rng
        return rng.choice((b"help", b"PING", b"quit", b"GET / HTTP/1.1", b"op ping", b"\x04", b"{"))

    def deep(self) -> bytes:
        """Nesting around and beyond max_depth, at the top or inside data, closed or not."""
        rng = self.rng
        levels = rng.choice((126, 127, 128, 129, 130, 255, 256, 1025, rng.randint(1, 3000)))
        opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
        inner = opener * levels + b"1" + closer * levels
        if rng.random() < 0.2:
            inner = inner[: rng.randrange(len(inner))]  # unbalanced
        if rng.random() < 0.5:
            return inner
        return b'{"op":"publish","channel":"c0","data":' + inner + b"}"

    def blank(self) -> bytes:
        """Lines that are blank (no reply) and lines that only look blank (a reply)."""
        rng = self.rng
        return bytes(rng.choice(b" \t\r\x0b\x0c") for _ in range(rng.randint(0, 6)))

    def near_limit(self) -> bytes:
        """A ping padded to just under or at the frame limit; rarely one byte over it."""
        rng = self.rng
        size = self.max_frame_bytes - rng.choice((0, 0, 1, 2, 100))
        if rng.random() < 0.1:
            size = self.max_frame_bytes + 1  # frame_too_large: the connection ends
        head, tail = b'{"op":"ping","id":"near-limit"', b"}"
        return head + b" " * max(0, size - len(head) - len(tail)) + tail

    def big_publish(self) -> bytes:
        """A batch publish of many small messages, as large as the frame limit allows."""
        rng = self.rng
        count = rng.randint(1, max(1, (self.max_frame_bytes - 64) // 8))
        messages = b",".join(b"%d" % rng.randrange(10**6) for _ in range(count))
        head = b'{"op":"publish","channel":' + _dump(rng.choice(CHANNELS)) + b',"messages":['
        return (head + messages)[: self.max_frame_bytes - 2] + b"]}"


@dataclass(frozen=True, slots=True)
class Framing:
    """What the server must make of a stream of bytes, by protocol.md's rules.

    `lines` are the frames that each get one reply, in order; `too_large`
    says a line beyond `max_frame_bytes` follows them, which gets one
    `frame_too_large` reply and ends the connection; `tail` is an
    unterminated rest (no reply until its newline comes).
    """

    lines: list[bytes]
    too_large: bool
    tail: bytes


_BLANK = b" \t\r"


def split_lines(stream: bytes, max_frame_bytes: int) -> Framing:
    pieces = stream.split(b"\n")
    tail = pieces.pop()
    lines: list[bytes] = []
    for piece in pieces:
        # Only one \r, the one just before the \n, is part of the line ending.
        line = piece[:-1] if piece.endswith(b"\r") else piece
        if len(line) > max_frame_bytes:
            return Framing(lines, True, b"")
        if line.strip(_BLANK):
            lines.append(line)
    # An unterminated line is refused as soon as it is certainly too long.
    content = tail[:-1] if tail.endswith(b"\r") else tail
    if len(content) > max_frame_bytes:
        return Framing(lines, True, b"")
    return Framing(lines, False, tail)
