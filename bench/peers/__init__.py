"""One adapter per wire protocol: how the load generator talks to each kind of server.

Every adapter has the same shape, so the scenarios need not know whom they
measure:

- `open(identity)`: a connected, authenticated `Link`; `identities(n)` first
  makes sure `n` connections can be authenticated at once;
- `setup(link, channel, queues)`: a channel whose every message reaches each
  of `queues` (tcpmq: a channel and subscriptions; Redis: one list per queue,
  fan-out by a Lua script; NATS: a stream with interest retention and one
  durable pull consumer per queue, explicit acks);
- `encode_publishes(link, channel, seqs)`: the wire bytes of one publish per
  sequence number, and `reply_counter(link)`: counts publish replies in raw
  bytes without parsing them (and raises on an error reply);
- `consumer(link, channel, queue, batch, wait)` and `cycle(...)`: the codecs
  of `loadgen.Consumer` and `loadgen.Cycler`.
"""

from __future__ import annotations

from ..servers import Server
from .nats import NatsPeer
from .redis import RedisPeer
from .tcpmq import TcpmqPeer

Peer = TcpmqPeer | RedisPeer | NatsPeer


def peer_for(server: Server) -> Peer:
    if server.spec.wire == "redis":
        return RedisPeer(server)
    if server.spec.wire == "nats":
        return NatsPeer(server)
    return TcpmqPeer(server)
