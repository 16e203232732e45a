"""Redis 7: RESP, pre-encoded.

A queue is a list (`<channel>.<queue>`). A publish to one queue is `RPUSH`;
to several, one `EVALSHA` of a Lua script that pushes onto every list, so a
fan-out is one round trip and atomic, as in tcpmq. A pull is `BLMPOP` with
`COUNT` (it blocks like a long-poll and returns at once when something is
there). Redis lists have no acknowledgement: a popped message is gone, so
Redis does less work per message than tcpmq or JetStream here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..loadgen import PULL_WINDOW, BenchError, Link, connect, payload
from ..servers import Server

FANOUT = b"for i = 1, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[1]) end return #KEYS"


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in args])


class Incomplete(Exception):
    """The buffer ends inside a reply."""


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply at `pos`: (value, position after it). Raises Incomplete."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise Incomplete
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : eol])
        if size < 0:
            return None, eol + 2
        end = eol + 2 + size
        if end + 2 > len(buf):
            raise Incomplete
        return buf[eol + 2 : end], end + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1 : eol])
        if count < 0:
            return None, eol + 2
        items = []
        pos = eol + 2
        size = len(buf)
        for _ in range(count):
            if pos < size and buf[pos] == 36:  # a bulk string: the common case, inline
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    raise Incomplete
                end = eol + 2 + int(buf[pos + 1 : eol])
                if end + 2 > size:
                    raise Incomplete
                items.append(buf[eol + 2 : end])
                pos = end + 2
            else:
                item, pos = parse(buf, pos)
                items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1 : eol]), eol + 2
    if kind == 43:  # + simple string
        return buf[pos + 1 : eol], eol + 2
    raise BenchError(f"redis: {bytes(buf[pos:eol])!r}")


def _reply_end(buf: bytearray) -> int:
    try:
        return parse(buf, 0)[1]
    except Incomplete:
        return -1


class RedisPeer:
    def __init__(self, server: Server) -> None:
        self.port = server.port
        self.password = server.password.encode()
        self.routes: dict[str, bytes] = {}  # channel -> the encoded command before a payload

    async def call(self, link: Link, *args: bytes) -> Any:
        link.write(command(*args))
        return parse(await link.read(_reply_end), 0)[0]

    async def open(self, identity: int = 0) -> Link:
        link = await connect(self.port)
        await self.call(link, b"AUTH", self.password)
        return link

    def identity(self, index: int) -> int:
        return 0

    async def identities(self, connections: int) -> None:
        pass

    async def setup(self, link: Link, channel: str, queues: Sequence[str]) -> None:
        keys = [f"{channel}.{queue}".encode() for queue in queues]
        await self.call(link, b"DEL", *keys)
        if len(keys) == 1:
            head = [b"RPUSH", keys[0]]
        else:
            sha = await self.call(link, b"SCRIPT", b"LOAD", FANOUT)
            head = [b"EVALSHA", bytes(sha), b"%d" % len(keys), *keys]
        # The command up to its last argument, the payload: encoded once.
        self.routes[channel] = command(*head, b"")[: -len(b"$0\r\n\r\n")]

    def _key(self, channel: str, queue: str) -> bytes:
        return f"{channel}.{queue}".encode()

    def encode_publishes(self, link: Link, channel: str, seqs: Sequence[int]) -> bytes:
        head = self.routes[channel] + b"$100\r\n"
        return b"".join([head + payload(seq) + b"\r\n" for seq in seqs])

    def reply_counter(self, link: Link) -> Any:
        def count(data: bytes) -> int:
            if b"-" in data:  # integer replies are never negative here; errors start with -
                raise BenchError(f"redis publish failed: {data[:300]!r}")
            return data.count(b"\n")

        return count

    def consumer(self, link: Link, channel: str, queue: str, batch: int, wait: float) -> Any:
        return RedisConsumer(self._key(channel, queue), batch, wait)

    def cycle(self, link: Link, channel: str, queue: str, wait: float) -> Any:
        return RedisCycle(self.routes[channel], self._key(channel, queue), wait)


def _blmpop(key: bytes, batch: int, wait: float) -> bytes:
    return command(b"BLMPOP", b"%g" % wait, b"1", key, b"LEFT", b"COUNT", b"%d" % batch)


class RedisConsumer:
    """BLMPOP `batch` with a `wait` timeout, PULL_WINDOW in flight; parse every item."""

    def __init__(self, key: bytes, batch: int, wait: float) -> None:
        self.pull = _blmpop(key, batch, wait)
        self.buf = bytearray()
        self.stop = False

    def start(self) -> bytes:
        return self.pull * PULL_WINDOW

    def feed(self, data: bytes) -> tuple[list[bytearray], bytes]:
        buf = self.buf
        buf += data
        pos = 0
        payloads: list[bytearray] = []
        pulls = 0
        try:
            while pos < len(buf):
                reply, pos = parse(buf, pos)
                pulls += 1
                if reply is not None:  # None: the wait ran out
                    payloads.extend(reply[1])
        except Incomplete:
            pass
        del buf[:pos]
        return payloads, b"" if self.stop else self.pull * pulls


class RedisCycle:
    """RPUSH (or the fan-out script) one message, then BLMPOP one."""

    def __init__(self, route: bytes, key: bytes, wait: float) -> None:
        self.route = route + b"$100\r\n"
        self.pull = _blmpop(key, 1, wait)
        self.buf = bytearray()
        self.due = 0

    def request(self, seq: int) -> bytes:
        self.due = 2
        return self.route + payload(seq) + b"\r\n" + self.pull

    def feed(self, data: bytes) -> tuple[list[bytearray], bool]:
        buf = self.buf
        buf += data
        pos = 0
        payloads: list[bytearray] = []
        try:
            while pos < len(buf):
                reply, pos = parse(buf, pos)
                self.due -= 1
                if self.due == 0 and reply is not None:
                    payloads = reply[1]
        except Incomplete:
            pass
        del buf[:pos]
        return payloads, self.due == 0
