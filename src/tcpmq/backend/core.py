"""A backend whose state lives in this process: the broker core plus a journal.

`CoreBackend` adapts `broker.Broker` (synchronous, no I/O, time passed in)
to the `Backend` interface: it reads the loop's clock, checks who may act on
a queue, encodes the hot replies from stored bytes, and parks long-poll pulls
as `PullWaiter`s. What makes it durable or not is the broker's journal and
the `Commits` beside it: the `log` backend journals to disk and its tickets
follow the group commit; the `memory` backend journals nothing and every
ticket is durable at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .. import wire
from ..broker import Broker, Entry, Queue
from ..config import Limits
from ..errors import Forbidden, TcpmqError
from ..pending import Pending, Result
from .base import NO_SETTINGS, Commits, QueueSettings


class ImmediateCommits:
    """Commits of a backend that keeps nothing: every ticket is durable at once."""

    def ticket(self) -> int:
        return 0

    def durable(self) -> int:
        return 0

    def when_durable(self, callback: Callable[[], None]) -> None:
        callback()

    def sync_now(self) -> None:
        pass


_NO_MESSAGES = wire.pull_fields([], [])


def _encode_deliveries(deliveries: list[Entry]) -> bytes:
    return wire.pull_fields([d.head for d in deliveries], [d.attempts for d in deliveries])


class PullWaiter(Pending):
    """A long-poll pull parked on a queue until messages arrive or `wait` passes."""

    __slots__ = ("_broker", "_queue", "_timer", "max")

    def __init__(self, broker: Broker, queue: Queue, max_messages: int) -> None:
        super().__init__()
        self.max = max_messages
        self._broker = broker
        self._queue = queue
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop, wait: float) -> None:
        self._timer = loop.call_later(wait, self._time_out)
        self._broker.wait(self._queue, self)

    def wake(self, deliveries: list[Entry]) -> None:
        self.complete(_encode_deliveries(deliveries))

    def fail(self, error: TcpmqError) -> None:
        self.complete(error)

    def _time_out(self) -> None:
        self.complete(_NO_MESSAGES)

    def stop_waiting(self) -> None:
        # A waiter exists only while nothing is ready: the answer now is none.
        # Waiting on would deliver messages into flight for a client that may
        # be gone, to come back only after their ack timeout.
        self._time_out()

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._broker.cancel_wait(self._queue, self)


class CoreBackend:
    def __init__(
        self,
        name: str,
        broker: Broker,
        commits: Commits,
        loop: asyncio.AbstractEventLoop,
        close_store: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.broker = broker
        self.commits = commits
        self._loop = loop
        self._close_store = close_store

    def check_room(self) -> None:
        self.broker.check_room()

    def use_limits(self, limits: Limits) -> None:
        self.broker.limits = limits

    # -- channels -------------------------------------------------------------

    def exempt_from_quotas(self, name: str) -> None:
        self.broker.exempt_from_quotas(name)

    def create_channel(
        self, name: str, owner: str, admin: bool, created_at: float, public: bool
    ) -> Result:
        channel = self.broker.create_channel(name, owner, created_at, public=public, admin=admin)
        return {"channel": channel.info()}

    def delete_channel(self, name: str, user: str, admin: bool) -> Result:
        channel = self.broker.channel(name)
        if not admin and channel.owner != user:
            raise Forbidden(f"only the owner of channel {channel.name!r} or an admin may delete it")
        self.broker.delete_channel(name)
        return None

    def list_channels(self) -> Result:
        channels = self.broker.channels
        return {"channels": [channels[name].info() for name in sorted(channels)]}

    def get_channel(self, name: str, now: float) -> Result:
        channel = self.broker.channel(name)
        info = channel.info()
        info["grants"] = channel.grants_info()
        info["queues"] = [channel.queues[q].info(now) for q in sorted(channel.queues)]
        return {"channel": info}

    # -- permissions ----------------------------------------------------------

    def _managed_channel(self, name: str, caller: str, admin: bool, what: str) -> None:
        channel = self.broker.channel(name)
        if not admin and channel.owner != caller:
            raise Forbidden(
                f"only the owner of channel {channel.name!r} ({channel.owner}) or an admin "
                f"may {what}"
            )

    def grant(self, channel: str, user: str, rights: list[str], caller: str, admin: bool) -> Result:
        self._managed_channel(channel, caller, admin, "grant rights on it")
        return {"rights": self.broker.grant(channel, user, rights)}

    def revoke(
        self,
        channel: str,
        user: str,
        rights: list[str],
        user_admin: bool,
        caller: str,
        admin: bool,
    ) -> Result:
        self._managed_channel(channel, caller, admin, "revoke rights on it")
        left, dropped = self.broker.revoke(channel, user, rights, user_admin)
        return {"rights": left, "queues_deleted": dropped}

    def update_channel(self, channel: str, public: bool, caller: str, admin: bool) -> Result:
        self._managed_channel(channel, caller, admin, "change its access")
        granted = self.broker.set_access(channel, public)
        return {"access": "public" if public else "private", "granted": granted}

    # -- queues ---------------------------------------------------------------

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
    ) -> Result:
        found, created = self.broker.subscribe(
            channel,
            queue,
            user,
            ack_timeout,
            created_at,
            admin=admin,
            reserved_for=reserved_for,
            overflow=settings.overflow,
            max_messages=settings.max_messages,
            max_bytes=settings.max_bytes,
        )
        return {"queue": found.info(created_at), "created": created}

    def list_queues(self, channel: str | None, now: float) -> Result:
        if channel is not None:
            queues = self.broker.channel(channel).queues
            return {"queues": [queues[name].info(now) for name in sorted(queues)]}
        channels = self.broker.channels
        return {
            "queues": [
                queues[name].info(now)
                for queues in (channels[c].queues for c in sorted(channels))
                for name in sorted(queues)
            ]
        }

    def _managed_queue(self, channel: str, queue: str, user: str, admin: bool, what: str) -> Queue:
        found = self.broker.queue(channel, queue)
        if not (admin or found.owner == user or self.broker.channels[channel].owner == user):
            raise Forbidden(f"only the queue's owner, the channel's owner or an admin may {what}")
        return found

    def delete_queue(self, channel: str, queue: str, user: str, admin: bool) -> Result:
        self._managed_queue(channel, queue, user, admin, "delete it")
        self.broker.delete_queue(channel, queue)
        return None

    def update_queue(
        self, channel: str, queue: str, user: str, admin: bool, settings: QueueSettings, now: float
    ) -> Result:
        found = self._managed_queue(channel, queue, user, admin, "change it")
        self.broker.configure(
            found, user, admin, settings.overflow, settings.max_messages, settings.max_bytes
        )
        return {"queue": found.info(now)}

    def purge_queue(self, channel: str, queue: str, user: str, admin: bool) -> Result:
        found = self._managed_queue(channel, queue, user, admin, "purge it")
        return {"purged": self.broker.purge(found)}

    def delete_user(self, name: str, heir: str) -> None:
        self.broker.delete_user(name, heir)

    # -- messages -------------------------------------------------------------

    def publish(
        self,
        channel: str,
        datas: list[bytes],
        publisher: bytes,
        published_at: float,
        user: str,
        admin: bool,
    ) -> tuple[int, int]:
        ids, queues = self.broker.publish(
            channel, datas, publisher, published_at, self._loop.time(), user, admin
        )
        return ids[0], queues

    def _owned_queue(self, channel: str, name: str, user: str, admin: bool) -> Queue:
        queue = self.broker.queue(channel, name)
        if queue.owner != user and not admin:
            raise Forbidden(f"queue {queue.name!r} belongs to another user")
        return queue

    def pull(
        self, channel: str, queue: str, user: str, admin: bool, max_messages: int, wait: float
    ) -> Result | Pending:
        found = self._owned_queue(channel, queue, user, admin)
        broker = self.broker
        deliveries = broker.pull(found, max_messages, self._loop.time())
        if deliveries or wait == 0:
            return _encode_deliveries(deliveries)
        waiter = PullWaiter(broker, found, max_messages)
        waiter.start(self._loop, wait)
        return waiter

    def peek(self, channel: str, queue: str, user: str, admin: bool, max_messages: int) -> Result:
        found = self._owned_queue(channel, queue, user, admin)
        ready = self.broker.peek(found, max_messages)
        return wire.pull_fields([head for head, _ in ready], [attempt for _, attempt in ready])

    def ack(self, channel: str, queue: str, user: str, admin: bool, ids: list[int]) -> Result:
        found = self._owned_queue(channel, queue, user, admin)
        acked, unknown = self.broker.ack(found, ids, self._loop.time())
        return {"acked": acked, "unknown": unknown}

    def nack(self, channel: str, queue: str, user: str, admin: bool, ids: list[int]) -> Result:
        found = self._owned_queue(channel, queue, user, admin)
        requeued, unknown = self.broker.nack(found, ids, self._loop.time())
        return {"requeued": requeued, "unknown": unknown}

    # -- time -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.broker.next_deadline()

    def expire(self, now: float) -> int:
        return self.broker.expire(now)

    async def close(self) -> None:
        if self._close_store is not None:
            await self._close_store()
