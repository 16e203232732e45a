"""NATS JetStream over the raw NATS protocol (no client library).

A channel is a stream of that name on the subject of that name, with
interest retention and file storage; a queue is a durable pull consumer with
explicit acks. Streams and consumers are made through the `$JS.API` request
subjects on the same connection. Each link subscribes once to its own inbox
(`_INBOX.<link>.*`), where JetStream's publish acks (`.p`), pull deliveries
(`.n<k>`) and API replies (`.r`) arrive. A publish is `PUB` with a reply
subject, answered by an ack once stored; a pull is a request to
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with `batch` and `expires`,
answered by the messages, or by a 408 status when it expires short; every
message is acked by an empty `PUB` to its reply subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..loadgen import JETSTREAM_PULL_WINDOW, BenchError, Link, connect, line_end, payload
from ..servers import USER, Server

PONG = b"PONG\r\n"
# Enough waiting pull requests for every connection of scenario S5 (default 512).
MAX_WAITING = 4096
MAX_ACK_PENDING = 100_000  # as tcpmq's max_inflight


def _message_end(buf: bytearray) -> int:
    """`take` for one protocol message (MSG/HMSG with its payload, or a control line)."""
    eol = buf.find(b"\r\n")
    if eol < 0:
        return -1
    if buf.startswith(b"MSG ") or buf.startswith(b"HMSG "):
        end = eol + 2 + int(buf[:eol].rsplit(b" ", 1)[1]) + 2
        return end if len(buf) >= end else -1
    return eol + 2


class NatsPeer:
    def __init__(self, server: Server) -> None:
        self.port = server.port
        self.password = server.password

    async def open(self, identity: int = 0) -> Link:
        link = await connect(self.port)
        await link.read(line_end)  # INFO
        options = {
            "verbose": False,
            "pedantic": False,
            "user": USER,
            "pass": self.password,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "bench",
            "version": "0",
        }
        link.write(
            b"CONNECT " + orjson.dumps(options) + b"\r\nSUB _INBOX.%d.* 1\r\nPING\r\n" % link.id
        )
        while (reply := await link.read(line_end)) != PONG:
            if not reply.startswith((b"INFO ", b"+OK")):  # INFO may come again after CONNECT
                raise BenchError(f"nats: {reply[:300]!r}")
        return link

    def identity(self, index: int) -> int:
        return 0

    async def identities(self, connections: int) -> None:
        pass

    async def request(self, link: Link, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        data = orjson.dumps(body)
        head = b"PUB %s _INBOX.%d.r %d\r\n" % (subject.encode(), link.id, len(data))
        link.write(head + data + b"\r\n")
        while True:
            message = await link.read(_message_end)
            if message.startswith(b"PING"):
                link.write(PONG)
            elif message.startswith(b"MSG "):
                reply: dict[str, Any] = orjson.loads(message.split(b"\r\n", 2)[1])
                if "error" in reply:
                    raise BenchError(f"nats {subject}: {reply['error']}")
                return reply
            elif not message.startswith((b"+OK", b"INFO ", b"PONG")):
                raise BenchError(f"nats {subject}: {message[:300]!r}")

    async def setup(self, link: Link, channel: str, queues: Sequence[str]) -> None:
        stream = {
            "name": channel,
            "subjects": [channel],
            "retention": "interest",
            "storage": "file",
            "num_replicas": 1,
        }
        await self.request(link, f"$JS.API.STREAM.CREATE.{channel}", stream)
        for queue in queues:
            config = {
                "durable_name": queue,
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "ack_wait": 30_000_000_000,
                "max_ack_pending": MAX_ACK_PENDING,
                "max_waiting": MAX_WAITING,
            }
            await self.request(
                link,
                f"$JS.API.CONSUMER.DURABLE.CREATE.{channel}.{queue}",
                {"stream_name": channel, "config": config},
            )

    def encode_publishes(self, link: Link, channel: str, seqs: Sequence[int]) -> bytes:
        head = b"PUB %s _INBOX.%d.p 100\r\n" % (channel.encode(), link.id)
        return b"".join([head + payload(seq) + b"\r\n" for seq in seqs])

    def reply_counter(self, link: Link) -> Any:
        lines = 0
        counted = 0

        def count(data: bytes) -> int:
            # A publish ack is two lines (MSG header, JSON); pings are one.
            nonlocal lines, counted
            if b'"error"' in data or b"-ERR" in data:
                raise BenchError(f"nats publish failed: {data[:300]!r}")
            lines += data.count(b"\n")
            if b"PING\r\n" in data:
                pings = data.count(b"PING\r\n")
                lines -= pings
                link.write(PONG * pings)
            replies = lines // 2 - counted
            counted += replies
            return replies

        return count

    def consumer(self, link: Link, channel: str, queue: str, batch: int, wait: float) -> Any:
        return NatsConsumer(link.id, channel, queue, batch, wait)

    def cycle(self, link: Link, channel: str, queue: str, wait: float) -> Any:
        return NatsCycle(link.id, channel, queue, wait)


def _next_request(stream: str, durable: str, batch: int, wait: float) -> tuple[bytes, bytes]:
    """The subject and body of a pull request."""
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}".encode()
    return subject, orjson.dumps({"batch": batch, "expires": int(wait * 1e9)})


class _Parser:
    """Splits the incoming stream into MSG and HMSG events; answers pings."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def events(self, data: bytes, out: list[bytes]) -> list[tuple[bytes, bytes, bytes, Any]]:
        """(subject, sid, reply subject, payload) per MSG; an HMSG's payload is its status."""
        buf = self.buf
        buf += data
        pos = 0
        found = []
        while (eol := buf.find(b"\r\n", pos)) >= 0:
            if buf.startswith(b"MSG ", pos):
                head = buf[pos + 4 : eol].split(b" ")
                end = eol + 2 + int(head[-1])
                if end + 2 > len(buf):
                    break
                reply = head[2] if len(head) == 4 else b""
                found.append((bytes(head[0]), bytes(head[1]), bytes(reply), buf[eol + 2 : end]))
                pos = end + 2
            elif buf.startswith(b"HMSG ", pos):
                head = buf[pos + 5 : eol].split(b" ")
                end = eol + 2 + int(head[-1])
                if end + 2 > len(buf):
                    break
                status = bytes(buf[eol + 11 : eol + 14])  # after "NATS/1.0 "
                if status not in (b"408", b"404", b"100"):
                    raise BenchError(f"nats: {bytes(buf[eol + 2 : end])!r}")
                found.append((bytes(head[0]), bytes(head[1]), b"", status))
                pos = end + 2
            elif buf.startswith(b"PING", pos):
                out.append(PONG)
                pos = eol + 2
            elif buf.startswith(b"-ERR", pos):
                raise BenchError(f"nats: {bytes(buf[pos:eol])!r}")
            else:  # +OK, PONG, INFO
                pos = eol + 2
        del buf[:pos]
        return found


class NatsConsumer:
    """Pull requests of `batch` (expiring after `wait`), two open; ack every message.

    JetStream delivers a pulled message under its own subject, so each request
    gets a subscription of its own, and its sid tells which request a message
    answers.
    """

    def __init__(self, link_id: int, stream: str, durable: str, batch: int, wait: float) -> None:
        self.subject, self.body = _next_request(stream, durable, batch, wait)
        self.inbox = b"_PULL.%d." % link_id
        self.batch = batch
        self.remaining: dict[bytes, int] = {}  # open request's sid -> messages due
        self.requests = 1  # sid 1 is the link's own inbox
        self.parser = _Parser()
        self.stop = False

    def _pull(self) -> bytes:
        self.requests += 1
        sid = b"%d" % self.requests
        inbox = self.inbox + sid
        self.remaining[sid] = self.batch
        request = b"PUB %s %s %d\r\n%s\r\n" % (self.subject, inbox, len(self.body), self.body)
        return b"SUB %s %s\r\n%s" % (inbox, sid, request)

    def start(self) -> bytes:
        return b"".join([self._pull() for _ in range(JETSTREAM_PULL_WINDOW)])

    def feed(self, data: bytes) -> tuple[list[bytearray], bytes]:
        out: list[bytes] = []
        payloads: list[bytearray] = []
        remaining = self.remaining
        for _, sid, reply, body in self.parser.events(data, out):
            if reply:  # a message: ack it
                payloads.append(body)
                out.append(b"PUB %s 0\r\n\r\n" % reply)
                left = remaining[sid] - 1
                if left:
                    remaining[sid] = left
                    continue
            elif body == b"100":  # idle heartbeat
                continue
            # Complete, or expired short (408): open the next one.
            if remaining.pop(sid, None) is not None:
                out.append(b"UNSUB %s\r\n" % sid)
                if not self.stop:
                    out.append(self._pull())
        return payloads, b"".join(out)


class NatsCycle:
    """Publish one (with its ack), pull one; ack the delivery with the next cycle."""

    def __init__(self, link_id: int, stream: str, durable: str, wait: float) -> None:
        subject, body = _next_request(stream, durable, 1, wait)
        self.publish_head = b"PUB %s _INBOX.%d.p 100\r\n" % (stream.encode(), link_id)
        self.pull = b"PUB %s _INBOX.%d.n %d\r\n%s\r\n" % (subject, link_id, len(body), body)
        self.pending_ack = b""
        self.parser = _Parser()
        self.due = 0

    def request(self, seq: int) -> bytes:
        self.due = 2
        out = self.pending_ack + self.publish_head + payload(seq) + b"\r\n" + self.pull
        self.pending_ack = b""
        return out

    def feed(self, data: bytes) -> tuple[list[bytearray], bool]:
        out: list[bytes] = []
        payloads: list[bytearray] = []
        for subject, _, reply, body in self.parser.events(data, out):
            if subject.endswith(b".p"):
                if b'"error"' in body:
                    raise BenchError(f"nats publish failed: {body!r}")
            elif reply:
                payloads.append(body)
                self.pending_ack = b"PUB %s 0\r\n\r\n" % reply
            elif body == b"100":
                continue
            self.due -= 1
        if out:
            self.pending_ack += b"".join(out)
        return payloads, self.due == 0
