"""The broker core: channels, their queues, in-flight tables and waiting pulls.

Theory of operation: this module is synchronous and does no I/O. Time comes in
as an argument (`now`, monotonic seconds), so everything here can be driven and
checked deterministically; the asyncio layer only moves bytes and wakes
waiters.

A channel holds one `Queue` per subscription. `publish` encodes each message
once into its *head*, the delivery's JSON up to its attempt number, and
appends the same bytes object to every queue. A message never delivered is
nothing but that head in the queue's `fresh` deque: its metadata (id, publish
time, publisher) is in the head, its attempt count is 0, and no object per
message sits beside its bytes, which keeps a deep queue small. `fresh` is in
id order, so when the first and last ids of a slice are as far apart as its
length, the ids between need not be read. From its first delivery on, a
message's life in one queue is an `Entry` (like beanstalkd's job struct): id,
head, attempts, deadline, and room for an expiry time and a dead-letter
reason. Within a queue a message is *ready* (in `fresh`, or in `retry` after a
nack or ack timeout) or *in flight* (in one of the `lanes`, keyed by id, until
acked or its deadline passes).

Ordering: a pull takes the lowest ready ids. Every id in `retry` is lower than
every id in `fresh` (a message reaches `retry` only after leaving the front of
the ready set, and later publishes get higher ids), so taking from the `retry`
heap first and then from the front of `fresh` delivers in publish order.

Deadlines: a lane is a dict of deliveries kept in insertion order. Deliveries
made with the same or a longer `ack_timeout` than the lane's are appended to it
and so come in deadline order, and expiring is a scan from its front. Only
when a queue's `ack_timeout` shrinks does a new lane begin (its deadlines may
precede the older lane's); a queue has one lane unless its timeout was
lowered while messages were in flight. One heap holds at most one entry per
queue with messages in flight, for the whole broker: no timer per message.

Waiting pulls register a `Waiter` on a queue. A waiter exists only while its
queue has nothing ready; whatever makes messages ready (publish, nack, expiry)
hands them to the waiters in the order they started waiting.

Persistence: every change that must survive a restart (channels and queues
created, changed or dropped, messages published, delivered and acked; a purge
is reported as an ack of the ready messages it dropped) is reported to a
`Journal`, in the order it happens. Nacks and expiries are not:
after a restart every unacked message is ready again, with the attempt count
its deliveries gave it. Channels and queues carry a `uid` that is never
reused, so the journal can tell a re-created channel from the one that was
deleted. A journal that cannot take new data (a full disk) says why in
`full`: publishes and creations are then refused before anything changes.

Memory: `memory` estimates what the queued and in-flight messages cost, for
`max_memory_bytes`. A message's body is one bytes object shared by every
queue of its channel, so it is counted once: each queue holding it is
charged its share, the body's size divided by the channel's queue count
when it was published (`Channel.fanouts`, by id range), and gives that share
back when the message leaves it. On top, each queue holding a message pays
`SLOT_BYTES`, the most a message costs a queue: a slot in `fresh`, or once
delivered an `Entry`. Paid at publish, so that pulls (which turn slots into
entries, 20 times larger) never take the estimate past what was admitted.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from .config import Limits
from .errors import AlreadyExists, Forbidden, LimitExceeded, NotFound, StorageFull, TcpmqError
from .wire import encode_message_head, encode_timestamp, head_id, head_published_at

#: A queued message: its encoded head (see `wire.encode_message_head`), shared
#: by every queue of its channel.
Message = bytes
#: Message ids: a range when consecutive (the usual pull), else a list.
Ids = range | list[int]

# Memory estimates (bytes, CPython 3.11, 64-bit), measured with tracemalloc:
#: a bytes object beyond its data (its header);
BODY_OVERHEAD = 33
#: one queue holding a message, at most: its slot in the queue's deque (8.25),
#: or once delivered its `Entry` (80) with its id object and its slot in a
#: lane dict or the retry heap: 154 by tracemalloc, 194 in the process's RSS
#: (bench/fanout_memory.py --pull-all: 6.3 million in flight took 1165 MiB).
SLOT_BYTES = 192
#: A pull reply keeps this much of `max_frame_bytes` for its own fields, and
#: counts each message as its stored head plus `DELIVERY_BYTES` (the attempt
#: and separators): see `Broker._take` and protocol.md, pull.
REPLY_ROOM = 256
DELIVERY_BYTES = 24


class Entry:
    """A message's life in one queue from its first delivery on.

    `attempts` counts deliveries so far (the one in flight included), so the
    next delivery is attempt `attempts + 1`. `deadline` is the ack deadline
    while in flight. `expires_at` and `reason` are the room message expiry and
    dead letters will use: when the message stops being deliverable, and why
    it was last returned.
    """

    __slots__ = ("attempts", "deadline", "expires_at", "head", "id", "reason")

    def __init__(self, message_id: int, head: Message, attempts: int, deadline: float) -> None:
        self.id = message_id
        self.head = head
        self.attempts = attempts
        self.deadline = deadline
        self.expires_at: float | None = None
        self.reason: str | None = None


class Journal(Protocol):
    """Where the broker reports the changes that must survive a restart."""

    #: Why the journal takes no new data now (publishes, creations), or None.
    full: str | None

    def channel_saved(self, channel: Channel) -> None: ...
    def channel_dropped(self, channel: Channel) -> None: ...
    def queue_saved(self, queue: Queue) -> None: ...
    def queue_dropped(self, queue: Queue) -> None: ...
    def published(self, channel: Channel, first_id: int, messages: list[Message]) -> None: ...
    def delivered(self, queue: Queue, ids: Ids) -> None: ...
    def acked(self, queue: Queue, ids: list[int]) -> None: ...


class MemoryJournal:
    """Keeps nothing: the broker's state lives only in memory."""

    full: str | None = None

    def channel_saved(self, channel: Channel) -> None:
        pass

    def channel_dropped(self, channel: Channel) -> None:
        pass

    def queue_saved(self, queue: Queue) -> None:
        pass

    def queue_dropped(self, queue: Queue) -> None:
        pass

    def published(self, channel: Channel, first_id: int, messages: list[Message]) -> None:
        pass

    def delivered(self, queue: Queue, ids: Ids) -> None:
        pass

    def acked(self, queue: Queue, ids: list[int]) -> None:
        pass


class Waiter(Protocol):
    """A pull waiting for messages (implemented by the session layer)."""

    max: int

    def wake(self, deliveries: list[Entry]) -> None:
        """The pull is answered with these deliveries (already in flight)."""

    def fail(self, error: TcpmqError) -> None:
        """The pull is answered with an error (its queue was deleted)."""


class Queue:
    __slots__ = (
        "ack_timeout",
        "acked",
        "channel",
        "channel_uid",
        "created_at",
        "deleted",
        "delivered",
        "fresh",
        "held_bytes",
        "inflight_count",
        "lane_timeout",
        "lanes",
        "memory",
        "name",
        "owner",
        "retry",
        "scheduled_at",
        "uid",
        "waiters",
    )

    def __init__(
        self,
        channel: str,
        name: str,
        owner: str,
        ack_timeout: float,
        created_at: float,
        uid: int = 0,
        channel_uid: int = 0,
    ) -> None:
        self.uid = uid
        self.channel_uid = channel_uid
        self.channel = channel
        self.name = name
        self.owner = owner
        self.ack_timeout = ack_timeout
        self.created_at = created_at
        self.fresh: deque[Message] = deque()
        # Encoded size of the messages held, ready or in flight (max_queue_bytes).
        self.held_bytes = 0
        # What the queue adds to the broker's `memory` (see the module docstring).
        self.memory = 0.0
        # (id, entry): a heap, lowest id first.
        self.retry: list[tuple[int, Entry]] = []
        # In-flight deliveries by id; each lane is in deadline order (see above).
        self.lanes: list[dict[int, Entry]] = []
        self.lane_timeout = ack_timeout
        self.inflight_count = 0
        self.waiters: deque[Waiter] = deque()
        # When the broker's deadline heap will next look at this queue.
        self.scheduled_at: float | None = None
        self.deleted = False
        # Messages delivered and acked since start (stats; one add per pull or ack call).
        self.delivered = 0
        self.acked = 0

    @property
    def depth(self) -> int:
        """Ready messages: never delivered, or returned by nack or ack timeout."""
        return len(self.fresh) + len(self.retry)

    def info(self, now: float) -> dict[str, object]:
        """The queue object of the protocol; `now` (epoch seconds) dates `oldest_age`."""
        oldest = self.oldest()
        return {
            "name": self.name,
            "channel": self.channel,
            "owner": self.owner,
            "created_at": self.created_at,
            "ack_timeout": self.ack_timeout,
            "depth": self.depth,
            "inflight": self.inflight_count,
            # Pulls parked on the queue: one per connection at most, since a
            # connection handles nothing else while its pull waits.
            "consumers": len(self.waiters),
            "oldest_age": None if oldest is None else max(0.0, now - head_published_at(oldest)),
            "redeliveries": len(self.retry),
        }

    def oldest(self) -> Message | None:
        """The head of the lowest id held, ready or in flight (the first published), if any.

        Ready messages are in id order (`retry` below `fresh`); in-flight ones
        are not, so their ids are scanned: one `min` per lane, in C.
        """
        best: Message | None = None
        best_id = 0
        if self.retry:
            best_id, entry = self.retry[0]
            best = entry.head
        elif self.fresh:
            best = self.fresh[0]
            best_id = head_id(best)
        for lane in self.lanes:
            if lane:
                lowest = min(lane)
                if best is None or lowest < best_id:
                    best, best_id = lane[lowest].head, lowest
        return best

    def settle_all(self, ids: Iterable[int]) -> tuple[list[Entry], list[int]]:
        """Take deliveries out of flight; returns them and the ids that were not in flight."""
        settled: list[Entry] = []
        unknown: list[int] = []
        if len(self.lanes) == 1:
            # The usual case, one lane: pop from it directly, not through `settle`.
            pop = self.lanes[0].pop
            for message_id in ids:
                delivery = pop(message_id, None)
                if delivery is None:
                    unknown.append(message_id)
                else:
                    settled.append(delivery)
            self.inflight_count -= len(settled)
            return settled, unknown
        for message_id in ids:
            delivery = self.settle(message_id)
            if delivery is None:
                unknown.append(message_id)
            else:
                settled.append(delivery)
        return settled, unknown

    def settle(self, message_id: int) -> Entry | None:
        """Take a delivery out of flight (acked or nacked); None if not in flight."""
        lanes = self.lanes
        for index, lane in enumerate(lanes):
            delivery = lane.pop(message_id, None)
            if delivery is not None:
                self.inflight_count -= 1
                if not lane and index < len(lanes) - 1:
                    del lanes[index]
                return delivery
        return None

    def lane(self) -> dict[int, Entry]:
        """The lane for deliveries made now: a new one if the timeout was lowered.

        Put a delivery in flight by adding it there and counting it in `inflight_count`.
        """
        lanes = self.lanes
        if not lanes or (self.ack_timeout < self.lane_timeout and lanes[-1]):
            lanes.append({})
        # The timeout of the lane's latest delivery, raised ones included: a
        # later, shorter one must not queue behind a longer deadline.
        self.lane_timeout = self.ack_timeout
        return lanes[-1]

    def record(self) -> dict[str, object]:
        """What the journal keeps of the queue (see storage)."""
        return {
            "uid": self.uid,
            "channel": self.channel_uid,
            "name": self.name,
            "owner": self.owner,
            "ack_timeout": self.ack_timeout,
            "created_at": self.created_at,
        }

    def held(self) -> list[Message]:
        """Every message the queue holds, ready or in flight, in id order."""
        held = list(self.fresh)
        if self.retry or self.inflight_count:
            held.extend(entry.head for entry in self.entries())
            held.sort(key=head_id)
        return held

    def entries(self) -> list[Entry]:
        """The messages delivered at least once and not yet acked (ready or in flight)."""
        entries = [entry for _, entry in self.retry]
        entries.extend(entry for lane in self.lanes for entry in lane.values())
        return entries

    def first_deadline(self) -> float | None:
        """The earliest ack deadline of the queue's in-flight deliveries."""
        firsts = [next(iter(lane.values())).deadline for lane in self.lanes if lane]
        return min(firsts) if firsts else None


class Channel:
    __slots__ = (
        "created_at",
        "epochs",
        "fanouts",
        "name",
        "next_id",
        "owner",
        "published",
        "queues",
        "uid",
    )

    def __init__(self, name: str, owner: str, created_at: float, uid: int = 0) -> None:
        self.uid = uid
        self.name = name
        self.owner = owner
        self.created_at = created_at
        self.queues: dict[str, Queue] = {}
        self.next_id = 1
        self.published = 0
        # The queue count at publish, by id range: messages from `epochs[i]`
        # on were published to `fanouts[i]` queues (see the module docstring).
        self.epochs: list[int] = []
        self.fanouts: list[int] = []

    def share(self, message_id: int) -> float:
        """The part of message `message_id`'s body each queue holding it is
        charged: 1 / the queue count it was published to."""
        epochs = self.epochs
        if message_id >= epochs[-1]:
            return 1.0 / self.fanouts[-1]
        return 1.0 / self.fanouts[bisect.bisect_right(epochs, message_id) - 1]

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "owner": self.owner,
            "created_at": self.created_at,
            "published": self.published,
            "queue_count": len(self.queues),
            "depth": sum(queue.depth for queue in self.queues.values()),
        }

    def record(self) -> dict[str, object]:
        """What the journal keeps of the channel (see storage)."""
        return {
            "uid": self.uid,
            "name": self.name,
            "owner": self.owner,
            "created_at": self.created_at,
            "next_id": self.next_id,
            "published": self.published,
        }


class Broker:
    def __init__(self, limits: Limits, journal: Journal | None = None) -> None:
        self.limits = limits
        # The most a message may take as stored: a pull reply can carry it.
        self._largest_stored = limits.max_frame_bytes - REPLY_ROOM - DELIVERY_BYTES
        self.journal: Journal = journal or MemoryJournal()
        self.channels: dict[str, Channel] = {}
        #: Estimated bytes of the messages held (see the module docstring).
        self.memory = 0.0
        # Queues per owner, for max_queues_per_user.
        self.queues_by_owner: dict[str, int] = {}
        # Uids of channels and queues; never reused (storage relies on it).
        self.next_uid = 1
        # (deadline, tiebreak, queue): when to look at a queue's in-flight table.
        self._deadlines: list[tuple[float, int, Queue]] = []
        self._tiebreak = itertools.count()
        # Messages published, delivered and acked since start, for stats and
        # metrics: one add per publish run, pull or ack call, never per message.
        self.messages_published = 0
        self.messages_delivered = 0
        self.messages_acked = 0

    # -- channels and queues ---------------------------------------------

    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise NotFound(f"channel {name!r} does not exist") from None

    def queue(self, channel: str, name: str) -> Queue:
        try:
            return self.channel(channel).queues[name]
        except KeyError:
            raise NotFound(f"queue {name!r} does not exist in channel {channel!r}") from None

    def check_room(self) -> None:
        """Raises: StorageFull, when the journal takes no new data now."""
        full = self.journal.full
        if full is not None:
            raise StorageFull(full)

    def create_channel(self, name: str, owner: str, created_at: float) -> Channel:
        if name in self.channels:
            raise AlreadyExists(f"channel {name!r} already exists")
        if len(self.channels) >= self.limits.max_channels:
            raise LimitExceeded(
                "too many channels", limit="max_channels", maximum=self.limits.max_channels
            )
        self.check_room()
        channel = self.channels[name] = Channel(name, owner, created_at, self._new_uid())
        self.journal.channel_saved(channel)
        return channel

    def delete_channel(self, name: str) -> None:
        channel = self.channel(name)
        del self.channels[name]
        self.journal.channel_dropped(channel)
        for queue in list(channel.queues.values()):
            self._drop_queue(channel, queue)

    def _new_uid(self) -> int:
        uid = self.next_uid
        self.next_uid += 1
        return uid

    def subscribe(
        self,
        channel_name: str,
        queue_name: str,
        owner: str,
        ack_timeout: float | None,
        created_at: float,
        admin: bool = False,
    ) -> tuple[Queue, bool]:
        """Find or create the queue; returns it and whether it was created.

        An admin may subscribe to a queue of another user (it stays theirs),
        as it may pull from it: admins have every right a queue's owner has.

        Raises:
            NotFound: no such channel.
            Forbidden: the queue exists and belongs to someone else.
            LimitExceeded: the channel has `max_queues_per_channel` queues, or
                the owner `max_queues_per_user`.
            StorageFull: the queue would be created and the journal is full.
        """
        channel = self.channel(channel_name)
        queue = channel.queues.get(queue_name)
        if queue is not None:
            if queue.owner != owner and not admin:
                raise Forbidden(
                    f"queue {queue_name!r} of channel {channel_name!r} belongs to another user"
                )
            if ack_timeout is not None and ack_timeout != queue.ack_timeout:
                queue.ack_timeout = ack_timeout
                self.journal.queue_saved(queue)
            return queue, False
        limits = self.limits
        if len(channel.queues) >= limits.max_queues_per_channel:
            raise LimitExceeded(
                "too many queues in this channel",
                limit="max_queues_per_channel",
                maximum=limits.max_queues_per_channel,
            )
        owned = self.queues_by_owner.get(owner, 0)
        if owned >= limits.max_queues_per_user:
            raise LimitExceeded(
                f"user {owner!r} has too many queues",
                limit="max_queues_per_user",
                maximum=limits.max_queues_per_user,
            )
        self.check_room()
        timeout = limits.default_ack_timeout if ack_timeout is None else ack_timeout
        queue = Queue(
            channel_name, queue_name, owner, timeout, created_at, self._new_uid(), channel.uid
        )
        channel.queues[queue_name] = queue
        self.queues_by_owner[owner] = owned + 1
        self.journal.queue_saved(queue)
        return queue, True

    def delete_queue(self, channel_name: str, queue_name: str) -> None:
        queue = self.queue(channel_name, queue_name)
        self.journal.queue_dropped(queue)
        self._drop_queue(self.channels[channel_name], queue)

    def delete_user(self, owner: str, heir: str) -> int:
        """The user `owner` is being deleted: drop its queues, hand its channels to `heir`.

        Its channels stay (other users' queues on them keep their messages);
        they pass to `heir`, the admin deleting the user. Returns the queues dropped.
        """
        doomed = [
            (channel, queue)
            for channel in self.channels.values()
            for queue in channel.queues.values()
            if queue.owner == owner
        ]
        for channel, queue in doomed:
            self.journal.queue_dropped(queue)
            self._drop_queue(channel, queue)
        for channel in self.channels.values():
            if channel.owner == owner:
                channel.owner = heir
                self.journal.channel_saved(channel)
        return len(doomed)

    def _drop_queue(self, channel: Channel, queue: Queue) -> None:
        channel.queues.pop(queue.name, None)
        queue.deleted = True
        owned = self.queues_by_owner.get(queue.owner, 0) - 1
        if owned > 0:
            self.queues_by_owner[queue.owner] = owned
        else:
            self.queues_by_owner.pop(queue.owner, None)
        self.memory = max(0.0, self.memory - queue.memory)
        queue.memory = 0.0
        queue.held_bytes = 0
        if not channel.queues:  # nothing held: the fan-out history can go
            channel.epochs.clear()
            channel.fanouts.clear()
        waiters = list(queue.waiters)
        queue.waiters.clear()
        queue.fresh.clear()
        queue.retry.clear()
        queue.lanes.clear()
        queue.inflight_count = 0
        gone = NotFound(f"queue {queue.name!r} of channel {channel.name!r} was deleted")
        for waiter in waiters:
            waiter.fail(gone)

    # -- messages ---------------------------------------------------------

    def publish(
        self,
        channel_name: str,
        datas: list[bytes],
        publisher: bytes,
        published_at: float,
        now: float,
    ) -> tuple[list[int], int]:
        """Append encoded messages to every queue of the channel, all or nothing.

        `datas` are the JSON-encoded data values; `publisher` the publisher's
        JSON-encoded name. Returns the message ids and how many queues got them.

        Raises:
            NotFound: no such channel.
            StorageFull: the journal takes no new data now.
            LimitExceeded: some queue would exceed its message or byte limit
                (counting what it holds, ready or in flight), the broker's
                memory budget would be exceeded, or a message would be too
                large, as stored, for a pull reply (`max_frame_bytes`).
        """
        channel = self.channel(channel_name)
        full = self.journal.full
        if full is not None:
            raise StorageFull(full)
        first = channel.next_id
        stamp = encode_timestamp(published_at)
        messages = [
            encode_message_head(first + i, data, stamp, publisher) for i, data in enumerate(datas)
        ]
        size = sum(map(len, messages))
        count = len(messages)
        if size > self._largest_stored:  # (the sum tells at once in the usual case)
            self._refuse_too_large(messages)
        queues = channel.queues.values()
        fanout = len(queues)
        if fanout:
            body = size + count * BODY_OVERHEAD
            cost = body + fanout * count * SLOT_BYTES
            limits = self.limits
            if self.memory + cost > limits.max_memory_bytes:
                raise LimitExceeded(
                    "the broker holds as many messages as its memory budget allows",
                    limit="max_memory_bytes",
                    maximum=limits.max_memory_bytes,
                )
            most_messages = limits.max_queue_messages - count
            most_bytes = limits.max_queue_bytes - size
            for queue in queues:
                if len(queue.fresh) + len(queue.retry) + queue.inflight_count > most_messages:
                    raise LimitExceeded(
                        f"queue {queue.name!r} is full",
                        limit="max_queue_messages",
                        maximum=limits.max_queue_messages,
                    )
                if queue.held_bytes > most_bytes:
                    raise LimitExceeded(
                        f"queue {queue.name!r} is full",
                        limit="max_queue_bytes",
                        maximum=limits.max_queue_bytes,
                    )
        channel.next_id = first + count
        channel.published += count
        self.messages_published += count
        self.journal.published(channel, first, messages)
        if not fanout:
            return list(range(first, first + count)), 0
        fanouts = channel.fanouts
        if not fanouts or fanouts[-1] != fanout:
            channel.epochs.append(first)
            fanouts.append(fanout)
        self.memory += cost
        charge = body / fanout + count * SLOT_BYTES
        for queue in queues:
            queue.fresh.extend(messages)
            queue.held_bytes += size
            queue.memory += charge
            if queue.waiters:
                self._serve_waiters(queue, now)
        return list(range(first, first + len(messages))), len(queues)

    def _refuse_too_large(self, messages: list[Message]) -> None:
        """Every message stored must fit in a pull reply on its own (its data
        may have grown when the server encoded it).

        Raises: LimitExceeded, naming the first that does not.
        """
        largest = self._largest_stored
        for index, message in enumerate(messages):
            if len(message) > largest:
                raise LimitExceeded(
                    f"message {index} takes {len(message)} bytes as the server stores it "
                    f"(its data as compact JSON, with id, time and publisher), more than "
                    f"the {largest} that fit in a pull reply",
                    limit="max_frame_bytes",
                    maximum=self.limits.max_frame_bytes,
                )

    def pull(self, queue: Queue, max_messages: int, now: float) -> list[Entry]:
        """Put up to `max_messages` ready messages in flight and return them."""
        if queue.inflight_count >= self.limits.max_inflight:
            return []
        return self._take(queue, max_messages, now)

    def wait(self, queue: Queue, waiter: Waiter) -> None:
        """Park a pull until messages are ready. Call only when `pull` returned none."""
        queue.waiters.append(waiter)

    def cancel_wait(self, queue: Queue, waiter: Waiter) -> None:
        # Already gone when it was woken or failed.
        with contextlib.suppress(ValueError):
            queue.waiters.remove(waiter)

    def ack(self, queue: Queue, ids: Iterable[int], now: float) -> tuple[int, list[int]]:
        """Remove in-flight messages for good; returns (acked, ids not in flight)."""
        settled, unknown = queue.settle_all(ids)
        if not settled:
            return 0, unknown
        acked = [delivery.id for delivery in settled]
        self._release(queue, acked, [delivery.head for delivery in settled])
        self.journal.acked(queue, acked)
        queue.acked += len(acked)
        self.messages_acked += len(acked)
        if queue.waiters:
            # Freed in-flight room may let waiters take messages held back by max_inflight.
            self._serve_waiters(queue, now)
        return len(settled), unknown

    def nack(self, queue: Queue, ids: Iterable[int], now: float) -> tuple[int, list[int]]:
        """Return in-flight messages to ready at once; returns (requeued, unknown ids)."""
        returned, unknown = queue.settle_all(ids)
        if returned:
            self._requeue(queue, returned, now)
        return len(returned), unknown

    def peek(self, queue: Queue, max_messages: int) -> list[tuple[Message, int]]:
        """Up to `max_messages` ready messages, in the order a pull would take them.

        Nothing changes: each comes with the attempt its next delivery would
        have. The reply is bounded as a pull's is (see `_take`).
        """
        retry = heapq.nsmallest(max_messages, queue.retry) if queue.retry else []
        candidates = itertools.chain(
            ((entry.head, entry.attempts + 1) for _, entry in retry),
            ((head, 1) for head in itertools.islice(queue.fresh, max_messages - len(retry))),
        )
        budget = self.limits.max_frame_bytes - 256
        found: list[tuple[Message, int]] = []
        for head, attempt in candidates:
            if found and len(head) + 24 > budget:
                break
            budget -= len(head) + 24
            found.append((head, attempt))
        return found

    def purge(self, queue: Queue) -> int:
        """Drop every ready message of the queue; in-flight ones stay. Returns how many.

        Journaled as an ack of the dropped ids, which replay already applies.
        """
        fresh = queue.fresh
        retry = queue.retry
        ids: list[int] = [message_id for message_id, _ in retry]
        if fresh:
            first, last = head_id(fresh[0]), head_id(fresh[-1])
            if last - first == len(fresh) - 1:
                ids.extend(range(first, last + 1))
            else:  # a gap: some were acked before a restart
                ids.extend(map(head_id, fresh))
        if not ids:
            return 0
        self.journal.acked(queue, ids)
        heads = [entry.head for _, entry in retry]
        heads.extend(fresh)
        self._release(queue, ids, heads)
        fresh.clear()
        retry.clear()
        return len(ids)

    # -- ack deadlines ----------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `expire` next has work to do (possibly earlier: a harmless early look)."""
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> int:
        """Return every in-flight message whose ack deadline has passed to ready."""
        heap = self._deadlines
        expired = 0
        while heap and heap[0][0] <= now:
            at, _, queue = heapq.heappop(heap)
            if queue.deleted or at != queue.scheduled_at:
                continue  # superseded by an earlier entry for the same queue
            queue.scheduled_at = None
            due: list[Entry] = []
            for lane in queue.lanes:
                for delivery in lane.values():
                    if delivery.deadline > now:
                        break
                    due.append(delivery)
            for delivery in due:
                queue.settle(delivery.id)
            expired += len(due)
            if due:
                # Lanes may interleave ids; the retry heap puts them back in order.
                self._requeue(queue, due, now)
            first = queue.first_deadline()
            if first is not None:
                self._schedule(queue, first)
        return expired

    def _schedule(self, queue: Queue, deadline: float) -> None:
        """Make sure the heap looks at `queue` no later than `deadline`."""
        if queue.scheduled_at is None or deadline < queue.scheduled_at:
            queue.scheduled_at = deadline
            heapq.heappush(self._deadlines, (deadline, next(self._tiebreak), queue))

    # -- internals --------------------------------------------------------

    def _take(self, queue: Queue, max_messages: int, now: float) -> list[Entry]:
        room = self.limits.max_inflight - queue.inflight_count
        count = min(max_messages, room)
        if count <= 0:
            return []
        deadline = now + queue.ack_timeout
        # A reply carries at least one message, then stops before exceeding a frame.
        # 256 bytes leave room for the reply's own fields around the messages.
        budget = self.limits.max_frame_bytes - 256
        retry = queue.retry
        fresh = queue.fresh
        # Every delivery of one pull has the same deadline, so the same lane.
        lane = queue.lane() if retry or fresh else {}
        taken: list[Entry] = []
        if not retry:
            # The usual case: only fresh messages, and all those taken fit in
            # the reply, so there is no budget to keep message by message.
            # (If fewer than `count` were ready, the loop below finds none.)
            fitting = min(count, len(fresh))
            total = sum(map(len, itertools.islice(fresh, fitting)))
            if fitting and total + 24 * fitting <= budget:
                popleft = fresh.popleft
                heads = [popleft() for _ in range(fitting)]
                ids = _slice_ids(heads)
                taken = list(map(Entry, ids, heads, [1] * fitting, [deadline] * fitting))
                lane.update(zip(ids, taken, strict=True))
                queue.inflight_count += fitting
                queue.delivered += fitting
                self.messages_delivered += fitting
                self._schedule(queue, deadline)
                self.journal.delivered(queue, ids)
                return taken
        while len(taken) < count:
            if retry:
                delivery = retry[0][1]
                message = delivery.head
                if taken and len(message) + 24 > budget:
                    break
                heapq.heappop(retry)
                delivery.attempts += 1
                delivery.deadline = deadline
            elif fresh:
                message = fresh[0]
                if taken and len(message) + 24 > budget:
                    break
                fresh.popleft()
                delivery = Entry(head_id(message), message, 1, deadline)
            else:
                break
            budget -= len(message) + 24
            lane[delivery.id] = delivery
            taken.append(delivery)
        if taken:
            queue.inflight_count += len(taken)
            queue.delivered += len(taken)
            self.messages_delivered += len(taken)
            self._schedule(queue, deadline)
            self.journal.delivered(queue, [delivery.id for delivery in taken])
        return taken

    def _release(self, queue: Queue, ids: Ids, heads: list[Message]) -> None:
        """The queue holds these messages no more (acked, purged): count them out."""
        size = sum(map(len, heads))
        count = len(heads)
        channel = self.channels[queue.channel]
        epochs = channel.epochs
        # The usual case: one fan-out for all. With one epoch every message
        # held is from it (the history starts again only with no queue left).
        if len(epochs) == 1 or min(ids) >= epochs[-1]:
            body = (size + count * BODY_OVERHEAD) / channel.fanouts[-1]
        else:  # published to different numbers of queues: each its own share
            share = channel.share
            body = sum(
                (len(head) + BODY_OVERHEAD) * share(message_id)
                for message_id, head in zip(ids, heads, strict=True)
            )
        freed = body + count * SLOT_BYTES
        queue.held_bytes -= size
        queue.memory -= freed
        self.memory = max(0.0, self.memory - freed)

    def recount(self) -> None:
        """Count memory, bytes and queues per owner anew, as after a recovery.

        The queue counts at publish are not kept across restarts: every
        message held is taken as published to its channel's queues of now.
        """
        self.memory = 0.0
        self.queues_by_owner = {}
        for channel in self.channels.values():
            fanout = max(1, len(channel.queues))
            channel.epochs = [0]
            channel.fanouts = [fanout]
            for queue in channel.queues.values():
                held = queue.held()
                queue.held_bytes = sum(map(len, held))
                queue.memory = (queue.held_bytes + len(held) * BODY_OVERHEAD) / fanout + len(
                    held
                ) * SLOT_BYTES
                self.memory += queue.memory
                self.queues_by_owner[queue.owner] = self.queues_by_owner.get(queue.owner, 0) + 1

    def _requeue(self, queue: Queue, deliveries: list[Entry], now: float) -> None:
        retry = queue.retry
        for delivery in deliveries:
            heapq.heappush(retry, (delivery.id, delivery))
        if queue.waiters:
            self._serve_waiters(queue, now)

    def _serve_waiters(self, queue: Queue, now: float) -> None:
        waiters = queue.waiters
        while waiters and queue.depth:
            deliveries = self._take(queue, waiters[0].max, now)
            if not deliveries:
                return  # max_inflight reached; waiters keep waiting
            waiters.popleft().wake(deliveries)


def _slice_ids(heads: list[Message]) -> range | list[int]:
    """The ids of consecutive messages taken from the front of `fresh` (id order)."""
    first = head_id(heads[0])
    if head_id(heads[-1]) - first == len(heads) - 1:
        return range(first, first + len(heads))
    return [head_id(head) for head in heads]  # a gap: some were acked before a restart
