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
deleted.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from .config import Limits
from .errors import AlreadyExists, Forbidden, LimitExceeded, NotFound, TcpmqError
from .wire import encode_message_head, encode_timestamp, head_id, head_published_at

#: A queued message: its encoded head (see `wire.encode_message_head`), shared
#: by every queue of its channel.
Message = bytes
#: Message ids: a range when consecutive (the usual pull), else a list.
Ids = range | list[int]


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

    def channel_saved(self, channel: Channel) -> None: ...
    def channel_dropped(self, channel: Channel) -> None: ...
    def queue_saved(self, queue: Queue) -> None: ...
    def queue_dropped(self, queue: Queue) -> None: ...
    def published(self, channel: Channel, first_id: int, messages: list[Message]) -> None: ...
    def delivered(self, queue: Queue, ids: Ids) -> None: ...
    def acked(self, queue: Queue, ids: list[int]) -> None: ...


class MemoryJournal:
    """Keeps nothing: the broker's state lives only in memory."""

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
        "channel",
        "channel_uid",
        "created_at",
        "deleted",
        "fresh",
        "inflight_count",
        "lane_timeout",
        "lanes",
        "name",
        "owner",
        "ready_bytes",
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
        self.ready_bytes = 0  # encoded size of fresh and retry messages
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
    __slots__ = ("created_at", "name", "next_id", "owner", "published", "queues", "uid")

    def __init__(self, name: str, owner: str, created_at: float, uid: int = 0) -> None:
        self.uid = uid
        self.name = name
        self.owner = owner
        self.created_at = created_at
        self.queues: dict[str, Queue] = {}
        self.next_id = 1
        self.published = 0

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
        self.journal: Journal = journal or MemoryJournal()
        self.channels: dict[str, Channel] = {}
        # Uids of channels and queues; never reused (storage relies on it).
        self.next_uid = 1
        # (deadline, tiebreak, queue): when to look at a queue's in-flight table.
        self._deadlines: list[tuple[float, int, Queue]] = []
        self._tiebreak = itertools.count()

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

    def create_channel(self, name: str, owner: str, created_at: float) -> Channel:
        if name in self.channels:
            raise AlreadyExists(f"channel {name!r} already exists")
        if len(self.channels) >= self.limits.max_channels:
            raise LimitExceeded(
                "too many channels", limit="max_channels", maximum=self.limits.max_channels
            )
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
            LimitExceeded: the channel has `max_queues_per_channel` queues.
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
        if len(channel.queues) >= self.limits.max_queues_per_channel:
            raise LimitExceeded(
                "too many queues in this channel",
                limit="max_queues_per_channel",
                maximum=self.limits.max_queues_per_channel,
            )
        timeout = self.limits.default_ack_timeout if ack_timeout is None else ack_timeout
        queue = Queue(
            channel_name, queue_name, owner, timeout, created_at, self._new_uid(), channel.uid
        )
        channel.queues[queue_name] = queue
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
            LimitExceeded: some queue would exceed its message or byte limit.
        """
        channel = self.channel(channel_name)
        first = channel.next_id
        stamp = encode_timestamp(published_at)
        messages = [
            encode_message_head(first + i, data, stamp, publisher) for i, data in enumerate(datas)
        ]
        size = sum(map(len, messages))
        queues = channel.queues.values()
        limits = self.limits
        for queue in queues:
            if len(queue.fresh) + len(queue.retry) + len(messages) > limits.max_queue_messages:
                raise LimitExceeded(
                    f"queue {queue.name!r} is full",
                    limit="max_queue_messages",
                    maximum=limits.max_queue_messages,
                )
            if queue.ready_bytes + size > limits.max_queue_bytes:
                raise LimitExceeded(
                    f"queue {queue.name!r} is full",
                    limit="max_queue_bytes",
                    maximum=limits.max_queue_bytes,
                )
        channel.next_id = first + len(messages)
        channel.published += len(messages)
        self.journal.published(channel, first, messages)
        for queue in queues:
            queue.fresh.extend(messages)
            queue.ready_bytes += size
            if queue.waiters:
                self._serve_waiters(queue, now)
        return list(range(first, first + len(messages))), len(queues)

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
        self.journal.acked(queue, [delivery.id for delivery in settled])
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
        ids: list[int] = [message_id for message_id, _ in queue.retry]
        if fresh:
            first, last = head_id(fresh[0]), head_id(fresh[-1])
            if last - first == len(fresh) - 1:
                ids.extend(range(first, last + 1))
            else:  # a gap: some were acked before a restart
                ids.extend(map(head_id, fresh))
        if not ids:
            return 0
        self.journal.acked(queue, ids)
        fresh.clear()
        queue.retry.clear()
        queue.ready_bytes = 0
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
        size = 0
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
                queue.ready_bytes -= total
                queue.inflight_count += fitting
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
            size += len(message)
            lane[delivery.id] = delivery
            taken.append(delivery)
        if taken:
            queue.ready_bytes -= size
            queue.inflight_count += len(taken)
            self._schedule(queue, deadline)
            self.journal.delivered(queue, [delivery.id for delivery in taken])
        return taken

    def _requeue(self, queue: Queue, deliveries: list[Entry], now: float) -> None:
        retry = queue.retry
        for delivery in deliveries:
            heapq.heappush(retry, (delivery.id, delivery))
            queue.ready_bytes += len(delivery.head)
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
