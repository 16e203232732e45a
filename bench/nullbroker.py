"""The null broker: tcpmq's framing and nothing else, the ceiling for a Python server.

It does what any Python server of this protocol must do and no more: on
uvloop, split what arrives into lines, decode each as JSON (orjson) to learn
its op, and answer in order with one write per read. It keeps no state:
`publish` gets a constant reply, `pull` gets `max` copies of one pre-encoded
message, `login` a dummy token, everything else `{"ok":true}`. How fast tcpmq
runs as a fraction of this is how much its broker work (queues, in-flight
tables, journal, validation) costs.

    python -m bench.nullbroker --port 7979
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import orjson
import uvloop

MESSAGE = (
    b'{"id":1,"data":"' + b"0" * 10 + b"x" * 88 + b'","published_at":1764355320.5,'
    b'"publisher":"admin","attempt":1}'
)
REPLIES = {
    "publish": b'{"ok":true,"message_ids":[1],"queues":1}\n',
    "ack": b'{"ok":true,"acked":1,"unknown":[]}\n',
    "login": b'{"ok":true,"user":"admin","role":"admin","token":"null","expires_at":0}\n',
    "auth": b'{"ok":true,"user":"admin","role":"admin","expires_at":0}\n',
}
OK = b'{"ok":true}\n'
HELLO = (
    b'{"event":"hello","server":"null","version":"0","protocol":1,'
    b'"auth":["token","password"],"max_frame_bytes":1048576}\n'
)
MAX_BATCH = 1000


def _pull_reply(count: int) -> bytes:
    return b'{"ok":true,"messages":[' + b",".join([MESSAGE] * count) + b"]}\n"


PULLS = [_pull_reply(count) for count in range(MAX_BATCH + 1)]


class NullSession(asyncio.Protocol):
    def __init__(self) -> None:
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.write(HELLO)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            request = orjson.loads(line)
            op = request["op"]
            if op == "pull":
                out.append(PULLS[min(int(request.get("max", 1)), MAX_BATCH)])
            else:
                out.append(REPLIES.get(op, OK))
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NullSession, "127.0.0.1", port, backlog=1024)
    print(f"null broker listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
