"""tcpmq, and the null broker that speaks its protocol: raw JSON lines (see protocol.md).

The first connection logs in as admin with the password and keeps the token;
every other connection authenticates with a token. A user may hold at most
1000 connections (`max_connections_per_user`), so many connections are spread
over extra admin users, made once per server by `identities`.

A server of several nodes (tcpmq-redis-x2) shares its users and token secret
across them: each new connection goes to the next node in turn, so a
publisher and its consumers, or the consumers of one queue, sit on
different nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from ..loadgen import PULL_WINDOW, BenchError, Link, connect, line_end, payload
from ..servers import Server

CONNECTIONS_PER_USER = 900  # under max_connections_per_user, with room for the login links
ERROR = b'"ok":false'


class TcpmqPeer:
    def __init__(self, server: Server) -> None:
        self.ports = server.ports
        self._next_node = 0
        self.password = server.password
        self.tokens: list[str] = []  # identity i authenticates with tokens[i]; 0 is admin

    async def call(self, link: Link, request: dict[str, Any]) -> dict[str, Any]:
        link.write(orjson.dumps(request) + b"\n")
        reply: dict[str, Any] = orjson.loads(await link.read(line_end))
        if not reply.get("ok"):
            raise BenchError(f"{request['op']}: {reply}")
        return reply

    async def _login(self, link: Link, user: str) -> str:
        reply = await self.call(link, {"op": "login", "user": user, "password": self.password})
        return str(reply["token"])

    async def open(self, identity: int = 0) -> Link:
        port = self.ports[self._next_node % len(self.ports)]
        self._next_node += 1
        link = await connect(port)
        await link.read(line_end)  # the hello
        if not self.tokens:
            self.tokens.append(await self._login(link, "admin"))
        else:
            await self.call(link, {"op": "auth", "token": self.tokens[identity]})
        return link

    def identity(self, index: int) -> int:
        """Which identity the `index`-th of many connections uses."""
        return 1 + index // CONNECTIONS_PER_USER

    async def identities(self, connections: int) -> None:
        """Create admin users enough for `connections` connections besides the first."""
        control = await self.open()
        try:
            while len(self.tokens) <= self.identity(connections - 1):
                name = f"bench{len(self.tokens)}"
                await self.call(
                    control,
                    {"op": "user.create", "name": name, "password": self.password, "role": "admin"},
                )
                self.tokens.append(await self._login(control, name))
            # Back to admin: the login above moved the control link to the last user.
            await self.call(control, {"op": "auth", "token": self.tokens[0]})
        finally:
            control.close()

    async def setup(self, link: Link, channel: str, queues: Sequence[str]) -> None:
        await self.call(link, {"op": "channel.create", "name": channel})
        for queue in queues:
            await self.call(link, {"op": "subscribe", "channel": channel, "queue": queue})

    def encode_publishes(self, link: Link, channel: str, seqs: Sequence[int]) -> bytes:
        head = b'{"op":"publish","channel":"%s","data":' % channel.encode()
        return b"".join([head + payload(seq) + b"}\n" for seq in seqs])

    def reply_counter(self, link: Link) -> Any:
        def count(data: bytes) -> int:
            if ERROR in data:
                raise BenchError(f"publish failed: {data[:300]!r}")
            return data.count(b"\n")

        return count

    def consumer(
        self, link: Link, channel: str, queue: str, batch: int, wait: float
    ) -> TcpmqConsumer:
        return TcpmqConsumer(channel, queue, batch, wait)

    def cycle(self, link: Link, channel: str, queue: str, wait: float) -> TcpmqCycle:
        return TcpmqCycle(channel, queue, wait)


def _pull(channel: str, queue: str, batch: int, wait: float) -> bytes:
    request = {"op": "pull", "channel": channel, "queue": queue, "max": batch, "wait": wait}
    return orjson.dumps(request) + b"\n"


def _ack_head(channel: str, queue: str) -> bytes:
    return b'{"op":"ack","channel":%b,"queue":%b,"ids":' % (
        orjson.dumps(channel),
        orjson.dumps(queue),
    )


class TcpmqConsumer:
    """Pull `batch` (long-poll `wait`), PULL_WINDOW pulls in flight; ack each batch as it comes."""

    def __init__(self, channel: str, queue: str, batch: int, wait: float) -> None:
        self.pull = _pull(channel, queue, batch, wait)
        self.ack_head = _ack_head(channel, queue)
        self.expect: deque[bool] = deque()  # per reply due: True for a pull, False for an ack
        self.tail = b""
        self.stop = False

    def start(self) -> bytes:
        self.expect.extend([True] * PULL_WINDOW)
        return self.pull * PULL_WINDOW

    def feed(self, data: bytes) -> tuple[list[str], bytes]:
        lines = (self.tail + data).split(b"\n") if self.tail else data.split(b"\n")
        self.tail = lines.pop()
        payloads: list[str] = []
        out: list[bytes] = []
        expect = self.expect
        for line in lines:
            if not expect.popleft():
                if ERROR in line:
                    raise BenchError(f"ack failed: {line[:300]!r}")
                continue
            reply = orjson.loads(line)
            messages = reply.get("messages")
            if messages is None:
                raise BenchError(f"pull failed: {line[:300]!r}")
            if messages:
                payloads.extend([message["data"] for message in messages])
                ids = orjson.dumps([message["id"] for message in messages])
                out.append(self.ack_head + ids + b"}\n")
                expect.append(False)
            if not self.stop:
                out.append(self.pull)
                expect.append(True)
        return payloads, b"".join(out)


class TcpmqCycle:
    """Publish one, pull one (long-poll), and ack it with the next cycle's requests."""

    def __init__(self, channel: str, queue: str, wait: float) -> None:
        self.publish_head = b'{"op":"publish","channel":%b,"data":' % orjson.dumps(channel)
        self.pull = _pull(channel, queue, 1, wait)
        self.ack_head = _ack_head(channel, queue)
        self.pending_ack = b""
        self.tail = b""
        self.due = 0

    def request(self, seq: int) -> bytes:
        out = self.pending_ack + self.publish_head + payload(seq) + b"}\n" + self.pull
        self.due = 3 if self.pending_ack else 2
        self.pending_ack = b""
        return out

    def feed(self, data: bytes) -> tuple[list[str], bool]:
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        payloads: list[str] = []
        for line in lines:
            self.due -= 1
            if ERROR in line:
                raise BenchError(f"request failed: {line[:300]!r}")
            if self.due == 0:  # the pull's reply comes last
                messages = orjson.loads(line)["messages"]
                payloads = [message["data"] for message in messages]
                if messages:
                    ids = orjson.dumps([message["id"] for message in messages])
                    self.pending_ack = self.ack_head + ids + b"}\n"
        return payloads, self.due == 0
