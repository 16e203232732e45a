"""The redis backend: the broker's operations as Lua scripts on a shared Redis.

A node keeps no broker state: every operation is one script (scripts.py) in
its channel's slot, so any number of nodes serve the same channels, queues and
in-flight messages, and a reply leaves only after Redis answered (its
durability is Redis's: protocol.md, Cluster). What a node keeps is its own
waiting pulls: a publish, nack, ack timeout or ack that frees in-flight room
PUBLISHes the channel's name on `<prefix>wake`; every node listens there and
runs the pulls waiting on that channel again (`Wakes`).

Ack deadlines are Redis's clock. Every node looks for due channels every
`EXPIRY_PERIOD` seconds in `<prefix>{sched}` (channel -> earliest deadline,
set by pulls) and runs `expire` on them; the script is atomic, so a message is
redelivered once however many nodes look. Every `SWEEP_PERIOD` each node also
runs `expire` on every channel, which bounds what a lost hint can delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rerr
from redis.asyncio.cluster import ClusterNode, RedisCluster

from .. import wire
from ..backend.base import NO_SETTINGS, Commits, QueueSettings
from ..backend.core import ImmediateCommits
from ..broker import DELIVERY_BYTES, REPLY_ROOM
from ..config import Limits
from ..errors import (
    AlreadyExists,
    Forbidden,
    LimitExceeded,
    NotFound,
    StorageFull,
    TcpmqError,
    Unavailable,
)
from ..pending import Pending, Result
from . import scripts
from .link import RedisLink, ReplyError, Script
from .url import RedisStore

log = logging.getLogger(__name__)

EXPIRY_PERIOD = 0.05
SWEEP_PERIOD = 10.0
#: Waiting pulls look again this often, in case a wake was lost (pub/sub is
#: at most once: a reconnect drops what was sent meanwhile).
REPOLL_PERIOD = 1.0
#: How long the store keeps waking a node's pulls on a channel after the node
#: said it has some (renewed at half of it while pulls wait there).
WAKE_INTEREST = 60.0
#: One call to Redis may take this long before the request answers `unavailable`.
CALL_TIMEOUT = 2.0

_NO_MESSAGES = wire.pull_fields([], [])
_RIGHTS = {"publish": "p", "subscribe": "s"}


def connect(store: RedisStore) -> Any:
    """A redis-py asyncio client for `store` (not yet connected: the first call connects)."""
    common: dict[str, Any] = {
        "username": store.username,
        "password": store.password,
        "socket_timeout": CALL_TIMEOUT,
        "socket_connect_timeout": CALL_TIMEOUT,
        "ssl": store.tls,
    }
    if store.cluster:
        nodes = [ClusterNode(host, port) for host, port in store.nodes]
        return RedisCluster(startup_nodes=nodes, **common)
    host, port = store.nodes[0]
    return aioredis.Redis(host=host, port=port, db=store.db, **common)


def reply_error(text: str) -> TcpmqError:
    """The broker's error for an error reply of Redis (`OOM ...`, `LOADING ...`)."""
    if text.startswith("OOM") or "maxmemory" in text:
        return LimitExceeded(
            "the shared store is full (Redis maxmemory)", limit="max_memory_bytes", maximum=0
        )
    if text.startswith("MISCONF"):
        return StorageFull("the shared store cannot write its data to disk (Redis MISCONF)")
    return Unavailable(f"the shared store cannot take the request now ({text})")


def unavailable(exc: Exception) -> TcpmqError:
    """The broker's error for what redis-py raised."""
    text = str(exc)
    if isinstance(exc, rerr.ResponseError):
        # (redis-py takes the OOM prefix off into the class)
        if isinstance(exc, rerr.OutOfMemoryError) or "maxmemory" in text:
            return LimitExceeded(
                "the shared store is full (Redis maxmemory)", limit="max_memory_bytes", maximum=0
            )
        if text.startswith("MISCONF"):
            return StorageFull("the shared store cannot write its data to disk (Redis MISCONF)")
    return Unavailable(f"the shared store cannot be reached or take writes now ({text})")


class TaskPending(Pending):
    """A reply made by a coroutine: its result, or the TcpmqError it raises."""

    __slots__ = ("_task",)

    def __init__(self, work: Coroutine[Any, Any, Result]) -> None:
        super().__init__()
        self._task = asyncio.ensure_future(work)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Result]) -> None:
        if task.cancelled():
            return
        self.settle(task.result)

    def release(self) -> None:
        pass  # the call is sent: let it finish (its effect stands either way)


def _decode(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class RedisBackend:
    """The `Backend` of a node over a shared Redis (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        store: RedisStore,
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
        is_admin: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.name = "redis"
        self.commits: Commits = ImmediateCommits()
        self.client = client
        self.store = store
        self.limits = limits
        self.is_admin = is_admin
        self._loop = loop
        prefix = store.prefix
        self._prefix = prefix
        self._dir = prefix + "{dir}:channels"
        self._sched = prefix + "{sched}"
        # Per-user byte quotas need the owners' totals in the script's reach.
        self._accounts = "" if store.cluster else prefix + "{dir}:held"
        self._scripts = {
            name: client.register_script(scripts.source(name))
            for name in (
                "PUBLISH", "PULL", "PEEK", "ACK", "NACK", "EXPIRE", "PURGE", "DELETE_QUEUE",
                "DELETE_CHANNEL", "FORGET_USER", "CREATE_CHANNEL", "CHANNEL_GET", "WANT_WAKES",
                "CHANNEL_DETAIL", "QUEUE_GET", "RIGHTS", "SET_ACCESS", "SUBSCRIBE",
                "UPDATE_QUEUE",
            )
        }  # fmt: skip
        self._directory = {
            name: client.register_script(getattr(scripts, name))
            for name in ("RESERVE", "RELEASE", "FORGET_OWNER")
        }
        # One Redis: the scripts go over a pipelined link of our own (link.py);
        # a Cluster's slots need redis-py's cluster client.
        self._link = None if store.cluster else RedisLink(store, CALL_TIMEOUT)
        self._link_scripts = {name: Script(scripts.source(name)) for name in self._scripts}
        self._link_directory = {name: Script(getattr(scripts, name)) for name in self._directory}
        self.waits = Wakes(self)
        self._hinted: dict[str, float] = {}
        # Until when (monotonic) the store knows this node wants a channel's wakes.
        self._wanted: dict[str, float] = {}
        self._node = os.urandom(8).hex()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._admins: set[str] = set()
        #: This node's traffic since start (stats.Counters).
        self.messages_published = 0
        self.messages_delivered = 0
        self.messages_acked = 0
        self._on_close: list[Callable[[], Coroutine[Any, Any, None]]] = []

    # -- plumbing ---------------------------------------------------------------

    def _meta(self, channel: str) -> str:
        return f"{self._prefix}{{ch:{channel}}}:m"

    async def _run(self, name: str, channel: str, *args: object) -> list[Any]:
        """Run a channel script; its result after the status, or raise its error."""
        if self._link is not None:
            reply = await self._link_run(name, channel, args)
            if reply[0] == 1:
                return list(reply[1:])
            raise self._error(channel, [v if isinstance(v, int) else _decode(v) for v in reply])
        script = self._scripts[name]
        keys = [self._meta(channel)]
        replicas = self.store.wait_replicas
        try:
            if not replicas or name in scripts.READ_ONLY:
                reply = await script(keys=keys, args=list(args))
            else:
                # WAIT covers the writes of its own connection: one pipeline.
                pipe = self.client.pipeline(transaction=False)
                await script(keys=keys, args=list(args), client=pipe)
                pipe.wait(replicas, self.store.wait_timeout_ms)
                reply, confirmed = await pipe.execute()
                if confirmed < replicas and reply[0] == 1:
                    raise Unavailable(
                        f"written on the Redis master, but {confirmed} of {replicas} replicas "
                        f"confirmed it within {self.store.wait_timeout_ms} ms: it may not "
                        "survive a failover"
                    )
        except rerr.RedisError as exc:
            raise unavailable(exc) from exc
        if reply[0] == 1:
            return list(reply[1:])
        raise self._error(channel, [_decode(v) if not isinstance(v, int) else v for v in reply])

    async def _link_run(self, name: str, channel: str, args: tuple[object, ...]) -> Any:
        assert self._link is not None
        link = self._link
        reply = await link.run(self._link_scripts[name], [self._meta(channel)], list(args))
        if isinstance(reply, ReplyError):
            raise reply_error(str(reply))
        replicas = self.store.wait_replicas
        if replicas and reply[0] == 1 and name not in scripts.READ_ONLY:
            # WAIT covers the writes made on its connection so far, this one's included.
            confirmed = await link.call("WAIT", replicas, self.store.wait_timeout_ms)
            if isinstance(confirmed, ReplyError) or confirmed < replicas:
                raise Unavailable(
                    f"written on the Redis master, but {confirmed} of {replicas} replicas "
                    f"confirmed it within {self.store.wait_timeout_ms} ms: it may not "
                    "survive a failover"
                )
        return reply

    async def _directory_call(self, name: str, *args: object) -> list[Any]:
        if self._link is not None:
            reply = await self._link.run(self._link_directory[name], [self._dir], list(args))
            if isinstance(reply, ReplyError):
                raise reply_error(str(reply))
            return list(reply)
        try:
            return list(await self._directory[name](keys=[self._dir], args=list(args)))
        except rerr.RedisError as exc:
            raise unavailable(exc) from exc

    def _error(self, channel: str, reply: list[Any]) -> TcpmqError:
        code, text, limit, most = reply[1], reply[2], reply[3], reply[4]
        if code == "not_found":
            if text == "queue":
                return NotFound(f"queue {limit!r} does not exist in channel {channel!r}")
            return NotFound(f"channel {channel!r} does not exist")
        if code == "forbidden":
            return Forbidden(text)
        if code in ("forbidden_publish", "forbidden_subscribe"):
            right = "publish" if code == "forbidden_publish" else "subscribe"
            what = "publishing to it" if right == "publish" else "subscribing to it"
            return Forbidden(
                f"channel {channel!r} is private: {what} needs the {right} right, which its "
                "owner or an admin can give with channel.grant"
            )
        if code == "too_large":
            largest = self._largest_stored
            return LimitExceeded(
                f"message {text} takes {limit} bytes as the server stores it (its data as "
                f"compact JSON, with id, time and publisher), more than the {largest} that "
                "fit in a pull reply",
                limit="max_frame_bytes",
                maximum=self.limits.max_frame_bytes,
            )
        if code == "full":
            return LimitExceeded(f"queue {text!r} is full", limit=limit, maximum=int(most))
        if code == "user_full":
            owner, _, queue = text.partition("\0")
            return LimitExceeded(
                f"user {owner!r}, owner of queue {queue!r}, holds as many queued bytes as allowed",
                limit=limit,
                maximum=int(most),
            )
        if code == "exists":
            return AlreadyExists(f"channel {channel!r} already exists")
        if code == "not_manager":
            return Forbidden(
                f"only the owner of channel {channel!r} ({text}) or an admin may do that"
            )
        if code == "reject_forbidden":
            return Forbidden(
                f"only the owner of channel {channel!r} or an admin may set overflow "
                '"reject": a full queue that rejects makes every publish to the channel '
                'fail; use "drop_oldest" or "drop_new"'
            )
        if code == "raise_forbidden":
            return Forbidden(
                f"only the owner of channel {channel!r} or an admin may raise {text} "
                f"(now {most}); you may lower it"
            )
        if code == "taken":
            return Forbidden(
                f"a queue of that name in channel {channel!r} belongs to another user "
                f"({text}); subscribe with a queue name of your own"
            )
        if code == "reserved":
            return Forbidden(f"that queue name is reserved for user {text!r}")
        if code == "limit":
            return LimitExceeded(text, limit=limit, maximum=int(most))
        return TcpmqError(f"unexpected store answer {code}: {text}")

    @property
    def _largest_stored(self) -> int:
        return self.limits.max_frame_bytes - REPLY_ROOM - DELIVERY_BYTES

    def _exempt(self) -> str:
        """The users no per-user quota holds (admins), as the scripts look them up."""
        return "|" + "|".join(sorted(self._admins)) + "|"

    def _queue_info(self, view: list[Any], channel: str, now: float) -> dict[str, object]:
        (name, owner, created_at, ack, depth, inflight, tail, redeliveries,
         overflow, max_messages, max_bytes, dropped, _uid, _oldest, _delivered,
         _acked) = view  # fmt: skip
        oldest = None
        if tail:
            oldest = max(0.0, now - wire.head_published_at(b'{"id":0' + tail))
        name = _decode(name)
        return {
            "name": name,
            "channel": channel,
            "owner": _decode(owner),
            "created_at": float(created_at),
            "ack_timeout": float(ack),
            "depth": depth,
            "inflight": inflight,
            "consumers": self.waits.count(channel, name),
            "oldest_age": oldest,
            "redeliveries": redeliveries,
            "overflow": _decode(overflow),
            "max_messages": max_messages,
            "max_bytes": max_bytes,
            "dropped": dropped,
        }

    @staticmethod
    def _channel_info(name: str, view: list[Any]) -> dict[str, object]:
        owner, access, created_at, published, queue_count, depth, _last = view
        return {
            "name": name,
            "owner": _decode(owner),
            "access": _decode(access),
            "created_at": float(created_at),
            "published": published,
            "queue_count": queue_count,
            "depth": depth,
        }

    # -- the Backend interface --------------------------------------------------

    def check_room(self) -> None:
        pass  # Redis says OOM or MISCONF on the write itself

    def use_limits(self, limits: Limits) -> None:
        self.limits = limits

    def exempt_from_quotas(self, name: str) -> None:
        self._admins.add(name)

    def create_channel(
        self, name: str, owner: str, admin: bool, created_at: float, public: bool
    ) -> Pending:
        async def create() -> Result:
            limits = self.limits
            per_user = -1 if admin else limits.max_channels_per_user
            reserved = await self._directory_call(
                "RESERVE", "channel", name, owner, limits.max_channels, per_user
            )
            if reserved[0] == 0:
                what = _decode(reserved[1])
                if what == "exists":
                    raise AlreadyExists(f"channel {name!r} already exists")
                if what == "max_channels":
                    raise LimitExceeded(
                        "too many channels", limit="max_channels", maximum=int(reserved[2])
                    )
                raise LimitExceeded(
                    f"user {owner!r} owns too many channels",
                    limit="max_channels_per_user",
                    maximum=int(reserved[2]),
                )
            access = "public" if public else "private"
            try:
                view = await self._run(
                    "CREATE_CHANNEL", name, name, owner, repr(created_at), access, reserved[1]
                )
            except BaseException:
                await self._directory_call("RELEASE", "channel", name, owner, 1)
                raise
            return {"channel": self._channel_info(name, view[0])}

        return TaskPending(create())

    def delete_channel(self, name: str, user: str, admin: bool) -> Pending:
        async def delete() -> Result:
            view = (await self._run("CHANNEL_GET", name))[0]
            owner = _decode(view[0])
            if not admin and owner != user:
                raise Forbidden(f"only the owner of channel {name!r} or an admin may delete it")
            owners = (await self._run("DELETE_CHANNEL", name, self._accounts))[0]
            await self._directory_call("RELEASE", "channel", name, owner, 1)
            for queue_owner in owners:
                await self._directory_call("RELEASE", "queue", "", _decode(queue_owner), 1)
            self.waits.fail_channel(name)
            return None

        return TaskPending(delete())

    async def _channel_names(self) -> list[str]:
        try:
            names = await self.client.hkeys(self._dir)
        except rerr.RedisError as exc:
            raise unavailable(exc) from exc
        return sorted(_decode(n) for n in names)

    def list_channels(self) -> Pending:
        async def listing() -> Result:
            channels = []
            for name in await self._channel_names():
                with contextlib.suppress(NotFound):  # deleted meanwhile
                    view = (await self._run("CHANNEL_GET", name))[0]
                    channels.append(self._channel_info(name, view))
            return {"channels": channels}

        return TaskPending(listing())

    def get_channel(self, name: str, now: float) -> Pending:
        async def get() -> Result:
            limits = self.limits
            view, grants, queues = await self._run(
                "CHANNEL_DETAIL", name, limits.max_queue_messages, limits.max_queue_bytes
            )
            info = self._channel_info(name, view)
            pairs = {_decode(grants[i]): _decode(grants[i + 1]) for i in range(0, len(grants), 2)}
            info["grants"] = {
                user: [right for right, letter in _RIGHTS.items() if letter in pairs[user]]
                for user in sorted(pairs)
            }
            found = [self._queue_info(q, name, now) for q in queues]
            info["queues"] = sorted(found, key=lambda q: str(q["name"]))
            return {"channel": info}

        return TaskPending(get())

    def grant(
        self, channel: str, user: str, rights: list[str], caller: str, admin: bool
    ) -> Pending:
        return TaskPending(self._rights(channel, user, rights, caller, admin, "grant", False))

    def revoke(
        self,
        channel: str,
        user: str,
        rights: list[str],
        user_admin: bool,
        caller: str,
        admin: bool,
    ) -> Pending:
        return TaskPending(self._rights(channel, user, rights, caller, admin, "revoke", user_admin))

    async def _rights(
        self,
        channel: str,
        user: str,
        rights: list[str],
        caller: str,
        admin: bool,
        mode: str,
        user_admin: bool,
    ) -> Result:
        letters = "".join(_RIGHTS[r] for r in rights)
        after, dropped = await self._run(
            "RIGHTS", channel, caller, int(admin), user, letters, mode, int(user_admin),
            self._accounts,
        )  # fmt: skip
        after = _decode(after)
        held = [right for right, letter in _RIGHTS.items() if letter in after]
        if mode == "grant":
            return {"rights": held}
        if dropped:
            await self._directory_call("RELEASE", "queue", "", user, dropped)
        return {"rights": held, "queues_deleted": dropped}

    def update_channel(self, channel: str, public: bool, caller: str, admin: bool) -> Pending:
        async def update() -> Result:
            access = "public" if public else "private"
            granted = (await self._run("SET_ACCESS", channel, caller, int(admin), access))[0]
            return {"access": access, "granted": [_decode(g) for g in granted]}

        return TaskPending(update())

    def stats_of_store(self, base: dict[str, Any]) -> Pending:
        """`stats` (stats.Observer's, of this node) with the store's channels and
        queues, and Redis's `used_memory` as `memory_bytes`."""

        async def fill() -> Result:
            now = time.time()
            limits = self.limits
            channels, queues = [], []
            for name in await self._channel_names():
                try:
                    view, _grants, views = await self._run(
                        "CHANNEL_DETAIL", name, limits.max_queue_messages, limits.max_queue_bytes
                    )
                except NotFound:  # deleted meanwhile
                    continue
                found = []
                for queue_view in sorted(views, key=lambda v: _decode(v[0])):
                    info = self._queue_info(queue_view, name, now)
                    oldest, info["delivered"], info["acked"] = queue_view[13:16]
                    # Ids from the oldest held to the channel's newest (stats.queue_stats).
                    info["lag"] = 0 if not oldest else view[6] + 1 - oldest
                    found.append(info)
                channel = self._channel_info(name, view)
                channels.append(
                    {
                        "name": name,
                        "published": channel["published"],
                        "queue_count": channel["queue_count"],
                        "depth": channel["depth"],
                        "inflight": sum(int(str(q["inflight"])) for q in found),
                    }
                )
                queues.extend(found)
            try:
                memory = (await self.client.info("memory"))["used_memory"]
            except rerr.RedisError as exc:
                raise unavailable(exc) from exc
            return {**base, "channels": channels, "queues": queues, "memory_bytes": memory}

        return TaskPending(fill())

    # -- queues -----------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        queue: str,
        user: str,
        admin: bool,
        ack_timeout: float | None,
        created_at: float,
        reserved_for: str | None,
        settings: QueueSettings = NO_SETTINGS,
    ) -> Pending:
        async def subscribe() -> Result:
            args = self._subscribe_args(
                queue, user, admin, ack_timeout, created_at, reserved_for, settings
            )
            reply = await self._run("SUBSCRIBE", channel, *args, 0, 0)
            if reply[0] != 2:
                return {"queue": self._queue_info(reply[1], channel, created_at), "created": False}
            per_user = -1 if admin else self.limits.max_queues_per_user
            reserved = await self._directory_call("RESERVE", "queue", queue, user, 0, per_user)
            if reserved[0] == 0:
                raise LimitExceeded(
                    f"user {user!r} has too many queues",
                    limit="max_queues_per_user",
                    maximum=int(reserved[2]),
                )
            try:
                reply = await self._run("SUBSCRIBE", channel, *args, 1, reserved[1])
            except BaseException:
                await self._directory_call("RELEASE", "queue", "", user, 1)
                raise
            if reply[0] != 1:  # made by another node meanwhile
                await self._directory_call("RELEASE", "queue", "", user, 1)
            return {
                "queue": self._queue_info(reply[1], channel, created_at),
                "created": reply[0] == 1,
            }

        return TaskPending(subscribe())

    def _subscribe_args(
        self,
        queue: str,
        user: str,
        admin: bool,
        ack_timeout: float | None,
        created_at: float,
        reserved_for: str | None,
        settings: QueueSettings,
    ) -> list[object]:
        limits = self.limits
        return [
            queue, user, int(admin), "" if ack_timeout is None else repr(ack_timeout),
            repr(created_at), reserved_for or "", settings.overflow or "",
            "" if settings.max_messages is None else settings.max_messages,
            "" if settings.max_bytes is None else settings.max_bytes,
            limits.max_queue_messages, limits.max_queue_bytes,
            limits.max_queues_per_channel, repr(limits.default_ack_timeout),
        ]  # fmt: skip

    def list_queues(self, channel: str | None, now: float) -> Pending:
        async def listing() -> Result:
            names = [channel] if channel is not None else await self._channel_names()
            queues: list[dict[str, object]] = []
            for name in names:
                try:
                    found = await self._queues(name, "", now)
                except NotFound:
                    if channel is not None:
                        raise
                    continue
                queues.extend(sorted(found[1], key=lambda q: str(q["name"])))
            return {"queues": queues}

        return TaskPending(listing())

    async def _queues(
        self, channel: str, queue: str, now: float
    ) -> tuple[str, list[dict[str, object]]]:
        limits = self.limits
        owner, views = await self._run(
            "QUEUE_GET", channel, queue, limits.max_queue_messages, limits.max_queue_bytes
        )
        if queue and not views:
            raise NotFound(f"queue {queue!r} does not exist in channel {channel!r}")
        return _decode(owner), [self._queue_info(v, channel, now) for v in views]

    async def _managed(
        self, channel: str, queue: str, user: str, admin: bool, what: str
    ) -> dict[str, object]:
        channel_owner, (found,) = await self._queues(channel, queue, time.time())
        if not (admin or found["owner"] == user or channel_owner == user):
            raise Forbidden(f"only the queue's owner, the channel's owner or an admin may {what}")
        return found

    def delete_queue(self, channel: str, queue: str, user: str, admin: bool) -> Pending:
        async def delete() -> Result:
            await self._managed(channel, queue, user, admin, "delete it")
            owner = (await self._run("DELETE_QUEUE", channel, queue, self._accounts))[0]
            await self._directory_call("RELEASE", "queue", "", _decode(owner), 1)
            self.waits.fail_queue(channel, queue)
            return None

        return TaskPending(delete())

    def update_queue(
        self, channel: str, queue: str, user: str, admin: bool, settings: QueueSettings, now: float
    ) -> Pending:
        async def update() -> Result:
            await self._managed(channel, queue, user, admin, "change it")
            limits = self.limits
            view = (
                await self._run(
                    "UPDATE_QUEUE",
                    channel,
                    queue,
                    user,
                    int(admin),
                    settings.overflow or "",
                    "" if settings.max_messages is None else settings.max_messages,
                    "" if settings.max_bytes is None else settings.max_bytes,
                    limits.max_queue_messages,
                    limits.max_queue_bytes,
                )
            )[0]
            return {"queue": self._queue_info(view, channel, now)}

        return TaskPending(update())

    def purge_queue(self, channel: str, queue: str, user: str, admin: bool) -> Pending:
        async def purge() -> Result:
            await self._managed(channel, queue, user, admin, "purge it")
            purged = (await self._run("PURGE", channel, queue, user, int(admin), self._accounts))[0]
            return {"purged": purged}

        return TaskPending(purge())

    async def delete_user(self, name: str, heir: str) -> None:
        inherited = 0
        for channel in await self._channel_names():
            with contextlib.suppress(NotFound):
                _dropped, got = await self._run("FORGET_USER", channel, name, heir, self._accounts)
                inherited += got
        await self._directory_call("FORGET_OWNER", name, heir, inherited)
        self._admins.discard(name)

    # -- messages ---------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        datas: list[bytes],
        publisher: bytes,
        published_at: float,
        user: str,
        admin: bool,
    ) -> tuple[int, int]:
        stamp = wire.encode_timestamp(published_at)
        tail = b',"published_at":' + stamp + b',"publisher":' + publisher + b',"attempt":'
        limits = self.limits
        first, queues = await self._run(
            "PUBLISH", channel, user, int(admin), limits.max_queue_messages,
            limits.max_queue_bytes, self._largest_stored, self._accounts,
            limits.max_queued_bytes_per_user, self._exempt(),
            *[b',"data":' + data + tail for data in datas],
        )  # fmt: skip
        self.messages_published += len(datas)
        if queues:
            self.waits.wake(channel)
        return first, queues

    def pull(
        self, channel: str, queue: str, user: str, admin: bool, max_messages: int, wait: float
    ) -> Pending:
        waiter = RedisPull(self, channel, queue, user, admin, max_messages)
        waiter.start(wait)
        return waiter

    async def want_wakes(self, channel: str) -> None:
        """Before a pull parks on `channel`: make sure every node's publishes wake us."""
        now = time.monotonic()
        if self._wanted.get(channel, 0.0) > now + WAKE_INTEREST / 2:
            return
        await self._run("WANT_WAKES", channel, self._node, WAKE_INTEREST)
        self._wanted[channel] = now + WAKE_INTEREST

    async def take(
        self, channel: str, queue: str, user: str, admin: bool, max_messages: int
    ) -> bytes | None:
        """Run one pull: its reply fields, or None when nothing was ready."""
        limits = self.limits
        reply = await self._run(
            "PULL", channel, queue, user, int(admin), max_messages,
            limits.max_frame_bytes - 256, limits.max_inflight,
        )  # fmt: skip
        if len(reply) <= 2:
            return None
        now_ms, deadline_ms = reply[0], reply[1]
        self._hint(channel, deadline_ms, now_ms)
        heads = [b'{"id":' + reply[i] + reply[i + 2] for i in range(2, len(reply), 3)]
        self.messages_delivered += len(heads)
        return wire.pull_fields(heads, [reply[i + 1] for i in range(2, len(reply), 3)])

    def peek(self, channel: str, queue: str, user: str, admin: bool, max_messages: int) -> Pending:
        async def peek() -> Result:
            reply = await self._run(
                "PEEK", channel, queue, user, int(admin), max_messages,
                self.limits.max_frame_bytes - 256,
            )  # fmt: skip
            heads = [b'{"id":' + reply[i] + reply[i + 2] for i in range(0, len(reply), 3)]
            return wire.pull_fields(heads, [reply[i + 1] for i in range(0, len(reply), 3)])

        return TaskPending(peek())

    def ack(self, channel: str, queue: str, user: str, admin: bool, ids: list[int]) -> Pending:
        async def ack() -> Result:
            acked, unknown = await self._run(
                "ACK", channel, queue, user, int(admin), self._accounts, self.limits.max_inflight,
                *ids,
            )  # fmt: skip
            self.messages_acked += acked
            return {"acked": acked, "unknown": [int(i) for i in unknown]}

        return TaskPending(ack())

    def nack(self, channel: str, queue: str, user: str, admin: bool, ids: list[int]) -> Pending:
        async def nack() -> Result:
            requeued, unknown = await self._run("NACK", channel, queue, user, int(admin), *ids)
            if requeued:
                self.waits.wake(channel)
            return {"requeued": requeued, "unknown": [int(i) for i in unknown]}

        return TaskPending(nack())

    # -- time -------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return None  # expiry runs in this backend's own task (see `start`)

    def expire(self, now: float) -> int:
        return 0

    def _hint(self, channel: str, deadline_ms: int, now_ms: int) -> None:
        """Note in `{sched}` when the channel next has a deadline (once per deadline passed)."""
        hinted = self._hinted.get(channel)
        if hinted is not None and now_ms < hinted <= deadline_ms:
            return
        self._hinted[channel] = deadline_ms
        task = asyncio.ensure_future(self.client.zadd(self._sched, {channel: deadline_ms}, lt=True))
        task.add_done_callback(_log_failure)

    async def start(self) -> None:
        """Check that Redis answers, then start listening for wakes and expiring."""
        try:
            await self.client.ping()
        except rerr.RedisError as exc:
            raise unavailable(exc) from exc
        self._tasks = [
            asyncio.ensure_future(self.waits.listen()),
            asyncio.ensure_future(self._expire_forever()),
        ]
        await self.waits.listening.wait()

    async def _expire_forever(self) -> None:
        next_sweep = next_repoll = 0.0
        while not self._closed:
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_PERIOD
                    for channel in await self._channel_names():
                        await self._expire(channel)
                due = await self.client.zrangebyscore(
                    self._sched, "-inf", int(time.time() * 1000), start=0, num=100
                )
                for name in due:
                    await self._expire(_decode(name))
                if time.monotonic() >= next_repoll:
                    next_repoll = time.monotonic() + REPOLL_PERIOD
                    self.waits.repoll()
            except (TcpmqError, rerr.RedisError) as exc:
                log.warning("expiry: %s", exc)
            await asyncio.sleep(EXPIRY_PERIOD)

    async def _expire(self, channel: str) -> None:
        expired, next_at, _now = await self._run("EXPIRE", channel)
        if expired:
            self.waits.wake(channel)
        if next_at < 0:
            await self.client.zrem(self._sched, channel)
        else:
            await self.client.zadd(self._sched, {channel: next_at})

    def on_close(self, callback: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Await `callback` as the backend closes (before its client goes)."""
        self._on_close.append(callback)

    async def close(self) -> None:
        self._closed = True
        for callback in self._on_close:
            with contextlib.suppress(Exception):
                await callback()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self.waits.close()
        if self._link is not None:
            await self._link.close()
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("redis store: %s", task.exception())


class RedisPull(Pending):
    """A pull: one script now, and if nothing was ready and it may wait, again
    at each wake of its channel until messages come or `wait` passes."""

    __slots__ = (
        "_admin", "_again", "_backend", "_busy", "_parked", "_timer", "channel", "max", "queue",
        "user",
    )  # fmt: skip

    def __init__(
        self,
        backend: RedisBackend,
        channel: str,
        queue: str,
        user: str,
        admin: bool,
        max_messages: int,
    ) -> None:
        super().__init__()
        self._backend = backend
        self.channel = channel
        self.queue = queue
        self.user = user
        self._admin = admin
        self.max = max_messages
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._again = False
        #: Waiting for a wake: its last script found nothing ready.
        self._parked = False

    def start(self, wait: float) -> None:
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self._time_out)
            self._backend.waits.add(self)
        self.poke()

    def poke(self) -> None:
        """Try again (a wake): one script at a time per pull."""
        if self.done:
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        task = asyncio.ensure_future(self._try())
        task.add_done_callback(_log_failure)

    @property
    def parked(self) -> bool:
        return self._parked and not self._busy

    async def _try(self) -> None:
        try:
            while not self.done:
                self._again = False
                try:
                    if self._timer is not None:  # it may wait: be woken from any node
                        await self._backend.want_wakes(self.channel)
                    fields = await self._backend.take(
                        self.channel, self.queue, self.user, self._admin, self.max
                    )
                except TcpmqError as exc:
                    self.complete(exc)
                    return
                if fields is not None:
                    if self.done:  # given up meanwhile: the messages come back after their timeout
                        return
                    self.complete(fields)
                    return
                if self._timer is None:  # it may not wait (any more)
                    self.complete(_NO_MESSAGES)
                    return
                self._parked = True
                if not self._again:
                    return
        finally:
            self._busy = False

    def _time_out(self) -> None:
        self.complete(_NO_MESSAGES)

    def stop_waiting(self) -> None:
        """Wait no more: a script under way still answers (with what it took,
        or none); a parked pull answers none now."""
        if self._busy:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._parked = False
        else:
            self._time_out()

    def fail(self, error: TcpmqError) -> None:
        self.complete(error)

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._backend.waits.remove(self)


class Wakes:
    """The pulls waiting on this node, by channel, and the wakes that reach them."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._waiting: dict[str, deque[RedisPull]] = {}
        self.listening = asyncio.Event()

    def add(self, pull: RedisPull) -> None:
        self._waiting.setdefault(pull.channel, deque()).append(pull)

    def remove(self, pull: RedisPull) -> None:
        waiting = self._waiting.get(pull.channel)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(pull)
            if not waiting:
                del self._waiting[pull.channel]

    def count(self, channel: str, queue: str) -> int:
        """Pulls parked on the queue (the `consumers` of a queue object)."""
        return sum(p.queue == queue and p.parked for p in self._waiting.get(channel, ()))

    def wake(self, channel: str) -> None:
        for pull in list(self._waiting.get(channel, ())):
            pull.poke()

    def repoll(self) -> None:
        for channel in list(self._waiting):
            self.wake(channel)

    def fail_queue(self, channel: str, queue: str) -> None:
        gone = NotFound(f"queue {queue!r} of channel {channel!r} was deleted")
        for pull in list(self._waiting.get(channel, ())):
            if pull.queue == queue:
                pull.fail(gone)

    def fail_channel(self, channel: str) -> None:
        for pull in list(self._waiting.get(channel, ())):
            pull.fail(NotFound(f"channel {channel!r} was deleted"))

    async def listen(self) -> None:
        """Run the pulls of each channel named on `<prefix>wake`, reconnecting as needed."""
        backend = self._backend
        store = backend.store
        topic = store.prefix + "wake"
        while True:
            client = backend.client
            if store.cluster:
                # A PUBLISH reaches the subscribers of every node of a cluster.
                host, port = store.nodes[0]
                client = aioredis.Redis(host=host, port=port, password=store.password)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(topic)
                self.listening.set()
                self.repoll()  # anything sent while we were not listening
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        self.wake(_decode(message["data"]))
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except rerr.RedisError as exc:
                log.warning("wake listener: %s; reconnecting", exc)
                self.listening.set()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(REPOLL_PERIOD)

    def close(self) -> None:
        gone = Unavailable("the server is shutting down")
        for waiting in list(self._waiting.values()):
            for pull in list(waiting):
                pull.fail(gone)
        self._waiting.clear()


def open_redis_backend(
    store: RedisStore, limits: Limits, loop: asyncio.AbstractEventLoop
) -> RedisBackend:
    return RedisBackend(connect(store), store, limits, loop)
