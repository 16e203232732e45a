"""Result objects of the protocol, shared by the server and the client library.

The server builds replies from these models (except on the hot path, where
publish and pull replies are assembled from pre-encoded bytes) and the client
library parses replies into them, so both sides agree on one definition.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["user", "admin"]
Access = Literal["private", "public"]
Right = Literal["publish", "subscribe"]
Overflow = Literal["reject", "drop_oldest", "drop_new"]


class _Result(BaseModel):
    # Clients ignore fields they do not know, so a newer server can add some.
    model_config = ConfigDict(frozen=True, extra="ignore")


class UserInfo(_Result):
    name: str
    role: Role
    created_at: float


class QueueInfo(_Result):
    name: str
    channel: str
    owner: str
    created_at: float
    ack_timeout: float
    depth: int
    inflight: int
    # Pulls waiting on the queue now (one per connection at most).
    consumers: int
    # Seconds since the oldest message held (ready or in flight) was published.
    oldest_age: float | None
    # Ready messages that were delivered before (nack, ack timeout, restart).
    redeliveries: int
    # What the queue does when full ("reject", "drop_oldest", "drop_new") and
    # its limits in force; None from a server older than overflow policies.
    overflow: Overflow | None = None
    max_messages: int | None = None
    max_bytes: int | None = None
    # Messages dropped because the queue was full, since it was created or
    # the server started.
    dropped: int = 0


class ChannelInfo(_Result):
    name: str
    owner: str
    # A server from before permissions says nothing: its channels are public.
    access: Access = "public"
    created_at: float
    published: int
    queue_count: int
    # Ready messages over all its queues.
    depth: int
    # Only `channel.get` fills these in: rights per user, and the queues.
    grants: dict[str, list[Right]] | None = None
    queues: list[QueueInfo] | None = None


class GrantResult(_Result):
    # Every right the user now holds on the channel.
    rights: list[Right]


class RevokeResult(_Result):
    # The rights the user still holds on the channel.
    rights: list[Right]
    # The user's queues deleted with its subscribe right.
    queues_deleted: int


class AccessResult(_Result):
    access: Access
    # Owners of the channel's queues granted `subscribe` as it became private.
    granted: list[str]


class Message(_Result):
    id: int
    data: Any
    published_at: float
    publisher: str
    attempt: int


class Identity(_Result):
    user: str
    role: Role
    expires_at: float | None = None


class LoginResult(Identity):
    token: str


class PublishResult(_Result):
    message_ids: list[int]
    queues: int


class AckResult(_Result):
    acked: int
    unknown: list[int]


class NackResult(_Result):
    requeued: int
    unknown: list[int]


class PurgeResult(_Result):
    purged: int


class TokensRevoked(_Result):
    # Tokens of the user issued (`iat`) before this epoch second are refused.
    tokens_valid_after: int


class QueueResult(_Result):
    queue: QueueInfo


class SubscribeResult(_Result):
    queue: QueueInfo
    created: bool


class ServerInfo(_Result):
    server: str
    version: str
    protocol: int
    store: str
    # What `channel.create` without `access` makes (None: a server from before).
    default_channel_access: Access | None = None
    # Every limit by name (protocol.md, Limits): numbers only.
    limits: dict[str, int | float]


class OpHelp(_Result):
    op: str
    fields: str
    summary: str


class QueueStats(QueueInfo):
    # Ids from the oldest message held to the channel's newest (0: none held).
    lag: int
    # Since the broker started.
    delivered: int
    acked: int


class ChannelStats(_Result):
    name: str
    published: int
    queue_count: int
    depth: int
    inflight: int


class FsyncStats(_Result):
    syncs: int
    recent: int
    p50: float | None
    p99: float | None
    max: float | None


class StoreStats(_Result):
    name: str
    disk_bytes: int | None
    free_bytes: int | None
    full: str | None
    fsync: FsyncStats | None


class Stats(_Result):
    uptime: float
    # "open", "authenticated"
    connections: dict[str, int]
    # Messages per second: "published", "delivered", "acked"; "seconds": the span.
    rates: dict[str, float]
    # Since the broker started: "published", "delivered", "acked".
    totals: dict[str, int]
    memory_bytes: int
    store: StoreStats
    channels: list[ChannelStats]
    queues: list[QueueStats]


class BackupResult(_Result):
    path: str
    channels: int
    queues: int
    bytes: int
    seconds: float
