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

Permissions: a channel is public (every user may publish and subscribe) or
private (its owner, admins, and the users granted a right). The rights are
`PUBLISH` and `SUBSCRIBE`; `grants` holds them per user. `publishers` is the
set of users who may publish, the owner included, kept beside `grants` so
that a publish checks one bool (`public`) and, on a private channel, one set:
once per publish run, never per message. Revoking `subscribe` drops the
user's queues on the channel, so a queue exists only for someone who may
read the channel and pulls need no rights check beyond the queue's owner.
Overflow: a queue is full when a publish would take it past its own
`max_messages` or `max_bytes` (at most the server's), or its owner past
`max_queued_bytes_per_user`, counted in the `Account` the owner's queues
share. What a full queue does is its `overflow` policy: `reject` refuses
the publish whole; `drop_oldest` drops its oldest ready messages to make
room; `drop_new` does not take what does not fit. Publish compares each
queue with its limits (attributes, no lookup) and only a full queue takes
the slow path, `_overflow`. A message a queue dropped or never took is
journaled as acked in it, as a purge is: the PUBLISH record puts every
message in every queue of its channel.

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
import sys
from collections import deque
from collections.abc import Iterable
from typing import NoReturn, Protocol

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

#: Overflow policies (see the module docstring and protocol.md).
REJECT = "reject"
DROP_OLDEST = "drop_oldest"
DROP_NEW = "drop_new"
OVERFLOWS = (REJECT, DROP_OLDEST, DROP_NEW)
#: The queued-bytes quota of a user exempt from quotas (admins).
UNLIMITED = sys.maxsize


class Account:
    """What one user owns, for the per-user quotas.

    Shared by the user's queues, so that publish reaches the owner's bytes
    with an attribute load (`queue.account.free_bytes`), not a lookup. It
    keeps the room left rather than the bytes held: publish compares a
    message's size with it, no sum made per queue.
    """

    __slots__ = ("channels", "free_bytes", "queues", "quota")

    def __init__(self, quota: int) -> None:
        self.channels = 0
        self.queues = 0
        # max_queued_bytes_per_user, or UNLIMITED for admins.
        self.quota = quota
        # The quota less the encoded bytes held, ready or in flight, by all
        # the user's queues (below 0 only if the quota was lowered since).
        self.free_bytes = quota

    @property
    def held_bytes(self) -> int:
        return self.quota - self.free_bytes


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
        "account",
        "ack_timeout",
        "acked",
        "channel",
        "channel_uid",
        "created_at",
        "deleted",
        "delivered",
        "dropped",
        "fresh",
        "held_bytes",
        "inflight_count",
        "lane_timeout",
        "lanes",
        "max_bytes",
        "max_messages",
        "memory",
        "name",
        "overflow",
        "own_max_bytes",
        "own_max_messages",
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
        # What a publish that would overflow the queue does (REJECT, DROP_*).
        self.overflow = REJECT
        # The limits asked for the queue (None: the server's); `max_messages`
        # and `max_bytes` are the ones in force (`Broker.apply_limits`).
        self.own_max_messages: int | None = None
        self.own_max_bytes: int | None = None
        self.max_messages = sys.maxsize
        self.max_bytes = sys.maxsize
        # The owner's account (the broker's, once the queue is one of its queues).
        self.account = Account(UNLIMITED)
        # Messages dropped or not taken since the queue was created or the broker started.
        self.dropped = 0
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
            "overflow": self.overflow,
            "max_messages": self.max_messages,
            "max_bytes": self.max_bytes,
            "dropped": self.dropped,
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
        record: dict[str, object] = {
            "uid": self.uid,
            "channel": self.channel_uid,
            "name": self.name,
            "owner": self.owner,
            "ack_timeout": self.ack_timeout,
            "created_at": self.created_at,
            "overflow": self.overflow,
        }
        # Only limits asked for: the others follow the server's setting.
        if self.own_max_messages is not None:
            record["max_messages"] = self.own_max_messages
        if self.own_max_bytes is not None:
            record["max_bytes"] = self.own_max_bytes
        return record

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


PUBLISH = "publish"
SUBSCRIBE = "subscribe"
#: Every right a channel can grant, in the order replies list them.
RIGHTS = (PUBLISH, SUBSCRIBE)
PRIVATE = "private"
PUBLIC = "public"


class Channel:
    __slots__ = (
        "created_at",
        "epochs",
        "fanouts",
        "grants",
        "name",
        "next_id",
        "owner",
        "public",
        "published",
        "publishers",
        "queues",
        "uid",
    )

    def __init__(
        self,
        name: str,
        owner: str,
        created_at: float,
        uid: int = 0,
        *,
        public: bool,
        grants: dict[str, frozenset[str]] | None = None,
    ) -> None:
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
        self.public = public
        # Rights granted per user (never empty sets); the owner needs none.
        self.grants: dict[str, frozenset[str]] = dict(grants or {})
        self.publishers: frozenset[str] = frozenset()
        self.rights_changed()

    def rights_changed(self) -> None:
        """Derive `publishers` again after `grants` or `owner` changed."""
        self.publishers = frozenset(
            [self.owner, *(user for user, rights in self.grants.items() if PUBLISH in rights)]
        )

    def may(self, user: str, admin: bool, right: str) -> bool:
        """Whether `user` has `right` here: public channel, admin, owner or granted."""
        if self.public or admin or user == self.owner:
            return True
        return right in self.grants.get(user, ())

    def refuse(self, right: str) -> Forbidden:
        """The error for a user without `right` on this (private) channel."""
        what = "publishing to it" if right == PUBLISH else "subscribing to it"
        return Forbidden(
            f"channel {self.name!r} is private: {what} needs the {right} right, which its "
            f"owner ({self.owner}) or an admin can give with channel.grant"
        )

    def grants_info(self) -> dict[str, list[str]]:
        """`{"alice": ["publish", "subscribe"]}`, users and rights in order."""
        grants = self.grants
        return {user: [r for r in RIGHTS if r in grants[user]] for user in sorted(grants)}

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
            "access": PUBLIC if self.public else PRIVATE,
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
            "access": PUBLIC if self.public else PRIVATE,
            "grants": self.grants_info(),
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
        #: What each user owns, for the per-user quotas (see `Account`).
        self.accounts: dict[str, Account] = {}
        # Users exempt from the quotas: the admins (see `exempt_from_quotas`).
        self._exempt: set[str] = set()
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

    # -- per-user quotas ----------------------------------------------------

    def account(self, owner: str) -> Account:
        """The account of `owner`, made on first use."""
        account = self.accounts.get(owner)
        if account is None:
            exempt = owner in self._exempt
            quota = UNLIMITED if exempt else self.limits.max_queued_bytes_per_user
            account = self.accounts[owner] = Account(quota)
        return account

    def exempt_from_quotas(self, owner: str) -> None:
        """`owner` is an admin: no per-user quota applies to it.

        The broker does not know the users, so the server names the admins
        (at start, and as they are created); `delete_user` forgets one.
        """
        self._exempt.add(owner)
        account = self.accounts.get(owner)
        if account is not None:
            account.free_bytes += UNLIMITED - account.quota
            account.quota = UNLIMITED

    @property
    def queues_by_owner(self) -> dict[str, int]:
        """Queues per owner, of the owners that have any (max_queues_per_user)."""
        return {owner: account.queues for owner, account in self.accounts.items() if account.queues}

    # -- channels and queues (continued) -----------------------------------

    def create_channel(
        self, name: str, owner: str, created_at: float, *, public: bool, admin: bool = False
    ) -> Channel:
        """Create a channel owned by `owner` (an admin when `admin`: no quota).

        Raises:
            AlreadyExists: the name is taken.
            LimitExceeded: `max_channels`, or the owner's `max_channels_per_user`.
            StorageFull: the journal is full.
        """
        if name in self.channels:
            raise AlreadyExists(f"channel {name!r} already exists")
        limits = self.limits
        if len(self.channels) >= limits.max_channels:
            raise LimitExceeded(
                "too many channels", limit="max_channels", maximum=limits.max_channels
            )
        account = self.account(owner)
        if not admin and account.channels >= limits.max_channels_per_user:
            raise LimitExceeded(
                f"user {owner!r} owns too many channels",
                limit="max_channels_per_user",
                maximum=limits.max_channels_per_user,
            )
        self.check_room()
        channel = self.channels[name] = Channel(
            name, owner, created_at, self._new_uid(), public=public
        )
        account.channels += 1
        self.journal.channel_saved(channel)
        return channel

    def delete_channel(self, name: str) -> None:
        channel = self.channel(name)
        del self.channels[name]
        self.account(channel.owner).channels -= 1
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
        reserved_for: str | None = None,
        overflow: str | None = None,
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> tuple[Queue, bool]:
        """Find or create the queue; returns it and whether it was created.

        An admin may subscribe to a queue of another user (it stays theirs),
        as it may pull from it: admins have every right a queue's owner has.
        `reserved_for` is the user the queue's name belongs to (the name is
        theirs, or starts with theirs and a dot), if any: only they and
        admins may create it. `owner` is the caller; `admin` whether it is
        an admin (exempt from the per-user quotas). Settings given replace
        the queue's (see `configure`); a new queue's `overflow` defaults to
        `reject` when its owner owns the channel or is an admin, else to
        `drop_oldest`. `max_messages` and `max_bytes` must be within the
        server's limits (the caller checks them).

        Raises:
            NotFound: no such channel.
            Forbidden: the queue exists and belongs to someone else; or it
                would be created without the subscribe right, or under a
                name reserved for another user; or `reject` asked by neither
                the channel's owner nor an admin.
            LimitExceeded: the channel has `max_queues_per_channel` queues
                (but for its owner and admins), or the owner `max_queues_per_user`.
            StorageFull: the queue would be created and the journal is full.
        """
        channel = self.channel(channel_name)
        queue = channel.queues.get(queue_name)
        if queue is not None:
            if queue.owner != owner and not admin:
                raise self._taken(channel, queue, owner, reserved_for)
            changed = self._configure(
                channel, queue, owner, admin, overflow, max_messages, max_bytes
            )
            if ack_timeout is not None and ack_timeout != queue.ack_timeout:
                queue.ack_timeout = ack_timeout
                changed = True
            if changed:
                self.journal.queue_saved(queue)
            return queue, False
        if not channel.may(owner, admin, SUBSCRIBE):
            raise channel.refuse(SUBSCRIBE)
        if reserved_for is not None and reserved_for != owner and not admin:
            raise Forbidden(
                f"queue name {queue_name!r} is reserved for user {reserved_for!r}; "
                f"name yours {owner}.<something>"
            )
        self._check_overflow(channel, owner, admin, overflow)
        limits = self.limits
        # Other users' queues cannot lock the channel's owner out of it.
        if len(channel.queues) >= limits.max_queues_per_channel and not (
            admin or owner == channel.owner
        ):
            raise LimitExceeded(
                "too many queues in this channel",
                limit="max_queues_per_channel",
                maximum=limits.max_queues_per_channel,
            )
        account = self.account(owner)
        if not admin and account.queues >= limits.max_queues_per_user:
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
        if overflow is None:
            # A queue that rejects blocks every publisher: the channel owner's choice.
            overflow = REJECT if admin or owner == channel.owner else DROP_OLDEST
        queue.overflow = overflow
        queue.own_max_messages = max_messages
        queue.own_max_bytes = max_bytes
        self.apply_limits(queue)
        queue.account = account
        account.queues += 1
        channel.queues[queue_name] = queue
        self.journal.queue_saved(queue)
        return queue, True

    @staticmethod
    def _taken(channel: Channel, queue: Queue, user: str, reserved_for: str | None) -> Forbidden:
        if reserved_for == user:
            # Made by an admin, or before the user existed: the name is theirs,
            # the queue is not.
            return Forbidden(
                f"queue {queue.name!r} of channel {channel.name!r} is named after you but "
                f"belongs to {queue.owner!r}; the channel's owner ({channel.owner}) or an "
                "admin can queue.delete it"
            )
        return Forbidden(
            f"queue {queue.name!r} of channel {channel.name!r} belongs to another user "
            f"({queue.owner}); subscribe with a queue name of your own"
        )

    # -- permissions --------------------------------------------------------

    def grant(self, channel_name: str, user: str, rights: Iterable[str]) -> list[str]:
        """Give `user` `rights` on the channel; returns all its rights there, in order."""
        channel = self.channel(channel_name)
        held = channel.grants.get(user, frozenset()) | frozenset(rights)
        if held != channel.grants.get(user):
            channel.grants[user] = held
            channel.rights_changed()
            self.journal.channel_saved(channel)
        return [right for right in RIGHTS if right in held]

    def revoke(
        self, channel_name: str, user: str, rights: Iterable[str], admin: bool
    ) -> tuple[list[str], int]:
        """Take `rights` from `user` (an admin if `admin`); returns the rights
        left and the queues deleted.

        When `user` may no longer subscribe, its queues on the channel go:
        they would go on receiving what it may no longer read. (On a public
        channel, and for its owner or an admin, they stay.)
        """
        channel = self.channel(channel_name)
        taken = frozenset(rights)
        before = channel.grants.get(user, frozenset())
        left = before - taken
        if left != before:
            if left:
                channel.grants[user] = left
            else:
                del channel.grants[user]
            channel.rights_changed()
            self.journal.channel_saved(channel)
        dropped = 0
        if SUBSCRIBE in taken and not channel.may(user, admin, SUBSCRIBE):
            for queue in [q for q in channel.queues.values() if q.owner == user]:
                self.journal.queue_dropped(queue)
                self._drop_queue(channel, queue)
                dropped += 1
        return [right for right in RIGHTS if right in left], dropped

    def set_access(self, channel_name: str, public: bool) -> list[str]:
        """Make the channel public or private; returns the users granted `subscribe`.

        Made private, the owners of its queues are granted `subscribe`, so
        no subscriber loses its queue without a word.
        """
        channel = self.channel(channel_name)
        granted: list[str] = []
        if not public and channel.public:
            owners = {queue.owner for queue in channel.queues.values()}
            for user in sorted(owners):
                rights = channel.grants.get(user, frozenset())
                if user != channel.owner and SUBSCRIBE not in rights:
                    channel.grants[user] = rights | {SUBSCRIBE}
                    granted.append(user)
            channel.rights_changed()
        if public != channel.public or granted:
            channel.public = public
            self.journal.channel_saved(channel)
        return granted

    def configure(
        self,
        queue: Queue,
        user: str,
        admin: bool,
        overflow: str | None,
        max_messages: int | None,
        max_bytes: int | None,
    ) -> None:
        """Change a queue's overflow policy and limits, as `user` asks (None: unchanged).

        Who may is the caller's to check (queue.update: the queue's owner,
        the channel's owner, admins); `reject` is allowed only to the
        channel's owner and admins. Limits must be within the server's.

        Raises:
            Forbidden: `reject` asked by neither the channel's owner nor an
                admin, or a limit raised by neither.
        """
        channel = self.channels[queue.channel]
        if self._configure(channel, queue, user, admin, overflow, max_messages, max_bytes):
            self.journal.queue_saved(queue)

    def _configure(
        self,
        channel: Channel,
        queue: Queue,
        user: str,
        admin: bool,
        overflow: str | None,
        max_messages: int | None,
        max_bytes: int | None,
    ) -> bool:
        """Apply the settings given; returns whether anything changed."""
        self._check_overflow(channel, user, admin, overflow)
        if not (admin or user == channel.owner):
            # A cap the channel's owner set must hold: others may only lower one.
            for name, asked, now in (
                ("max_messages", max_messages, queue.max_messages),
                ("max_bytes", max_bytes, queue.max_bytes),
            ):
                if asked is not None and asked > now:
                    raise Forbidden(
                        f"only the owner of channel {channel.name!r} or an admin may raise "
                        f"{name} of queue {queue.name!r} (now {now}); you may lower it"
                    )
        before = (queue.overflow, queue.own_max_messages, queue.own_max_bytes)
        if overflow is not None:
            queue.overflow = overflow
        if max_messages is not None:
            queue.own_max_messages = max_messages
        if max_bytes is not None:
            queue.own_max_bytes = max_bytes
        self.apply_limits(queue)
        return (queue.overflow, queue.own_max_messages, queue.own_max_bytes) != before

    @staticmethod
    def _check_overflow(channel: Channel, user: str, admin: bool, overflow: str | None) -> None:
        if overflow == REJECT and not admin and user != channel.owner:
            raise Forbidden(
                f"only the owner of channel {channel.name!r} or an admin may set overflow "
                '"reject": a full queue that rejects makes every publish to the channel '
                'fail; use "drop_oldest" or "drop_new"'
            )

    def apply_limits(self, queue: Queue) -> None:
        """Set the limits in force: those asked for, within the server's."""
        limits = self.limits
        asked = queue.own_max_messages
        most = limits.max_queue_messages
        queue.max_messages = most if asked is None else min(asked, most)
        asked = queue.own_max_bytes
        most = limits.max_queue_bytes
        queue.max_bytes = most if asked is None else min(asked, most)

    def delete_queue(self, channel_name: str, queue_name: str) -> None:
        queue = self.queue(channel_name, queue_name)
        self.journal.queue_dropped(queue)
        self._drop_queue(self.channels[channel_name], queue)

    def delete_user(self, owner: str, heir: str) -> int:
        """The user `owner` is being deleted: drop its queues and its grants,
        hand its channels to `heir`.

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
        # A user created later under the name starts afresh (and not exempt).
        self.accounts.pop(owner, None)
        self._exempt.discard(owner)
        inherited = 0
        for channel in self.channels.values():
            # A user created later under the same name inherits nothing.
            if channel.owner == owner or owner in channel.grants:
                if channel.owner == owner:
                    channel.owner = heir
                    inherited += 1
                channel.grants.pop(owner, None)
                channel.rights_changed()
                self.journal.channel_saved(channel)
        self.account(heir).channels += inherited
        return len(doomed)

    def _drop_queue(self, channel: Channel, queue: Queue) -> None:
        channel.queues.pop(queue.name, None)
        queue.deleted = True
        account = queue.account
        account.queues -= 1
        account.free_bytes += queue.held_bytes
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
        user: str,
        admin: bool,
    ) -> tuple[list[int], int]:
        """Append encoded messages to every queue of the channel.

        `datas` are the JSON-encoded data values; `publisher` the publisher's
        JSON-encoded name, `user` the same name and `admin` its role, for
        the channel's rights. Returns the message ids and how many queues the
        channel has. A full queue (see the module docstring) refuses the

        Raises:
            NotFound: no such channel.
            Forbidden: the channel is private and `user` may not publish to it.
            StorageFull: the journal takes no new data now.
            LimitExceeded: a full queue rejects (`max_queue_messages`,
                `max_queue_bytes` with the queue's own maximum, or
                `max_queued_bytes_per_user`), the broker's memory budget would
                be exceeded, or a message would be too large, as stored, for
                a pull reply (`max_frame_bytes`).
        """
        channel = self.channel(channel_name)
        # Once per publish run: a bool, then on a private channel one set.
        if not (channel.public or admin or user in channel.publishers):
            raise channel.refuse(PUBLISH)
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
            # The owners' bytes are counted as each queue is found to have
            # room, so that queues of one owner see each other's share.
            overflowing: list[Queue] | None = None
            for queue in queues:
                account = queue.account
                if (
                    len(queue.fresh) + len(queue.retry) + queue.inflight_count + count
                    > queue.max_messages
                    or queue.held_bytes + size > queue.max_bytes
                    or size > account.free_bytes
                ):
                    if queue.overflow == REJECT:
                        self._refuse(queues, queue, overflowing, count, size)
                    if overflowing is None:
                        overflowing = []
                    overflowing.append(queue)
                else:
                    account.free_bytes -= size
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
            if overflowing is not None and queue in overflowing:
                self._overflow(queue, messages, first, fanout)
            else:
                queue.fresh.extend(messages)
                queue.held_bytes += size
                queue.memory += charge
            if queue.waiters:
                self._serve_waiters(queue, now)
        return list(range(first, first + len(messages))), len(queues)

    def _refuse(
        self,
        queues: Iterable[Queue],
        full: Queue,
        overflowing: list[Queue] | None,
        count: int,
        size: int,
    ) -> NoReturn:
        """A publish of `count` messages (`size` bytes) meets `full`, which rejects.

        Gives back the owners' bytes counted for the queues before it.

        Raises: LimitExceeded, naming the limit `full` would pass.
        """
        for queue in queues:
            if queue is full:
                break
            if overflowing is None or queue not in overflowing:
                queue.account.free_bytes += size
        if full.depth + full.inflight_count + count > full.max_messages:
            raise LimitExceeded(
                f"queue {full.name!r} is full",
                limit="max_queue_messages",
                maximum=full.max_messages,
            )
        if full.held_bytes + size > full.max_bytes:
            raise LimitExceeded(
                f"queue {full.name!r} is full", limit="max_queue_bytes", maximum=full.max_bytes
            )
        raise LimitExceeded(
            f"user {full.owner!r}, owner of queue {full.name!r}, holds as many queued bytes "
            "as allowed",
            limit="max_queued_bytes_per_user",
            maximum=full.account.quota,
        )

    def _overflow(self, queue: Queue, messages: list[Message], first: int, fanout: int) -> None:
        """Put what fits of `messages` (ids from `first`) into a full queue, by its policy.

        Message by message, as if published one by one: `drop_new` takes
        each that fits; `drop_oldest` first drops the oldest ready messages
        (the batch's own included) until it fits. It drops none when that
        cannot make room: when what is in flight fills the queue's
        `max_messages`, or the message alone is beyond `max_bytes`, or the
        owner's other queues fill its quota. (In-flight bytes are not
        counted apart, so a queue whose in-flight messages fill `max_bytes`
        may drop its ready ones and still not take the message.)

        Called after `memory` was charged for every queue taking every
        message: gives back what the queue did not take.
        """
        account = queue.account
        fresh = queue.fresh
        retry = queue.retry
        most_messages = queue.max_messages
        most_bytes = queue.max_bytes
        drop_oldest = queue.overflow == DROP_OLDEST
        held = len(fresh) + len(retry) + queue.inflight_count
        dropped_ids: list[int] = []
        dropped_heads: list[Message] = []
        refused: list[int] = []
        refused_bytes = 0
        for index, head in enumerate(messages):
            length = len(head)
            if (
                drop_oldest
                and queue.inflight_count < most_messages
                and length <= most_bytes
                and length <= account.free_bytes + queue.held_bytes
            ):
                while (fresh or retry) and (
                    held >= most_messages
                    or queue.held_bytes + length > most_bytes
                    or length > account.free_bytes
                ):
                    if retry:
                        message_id, entry = heapq.heappop(retry)
                        old = entry.head
                    else:
                        old = fresh.popleft()
                        message_id = head_id(old)
                    dropped_ids.append(message_id)
                    dropped_heads.append(old)
                    held -= 1
                    queue.held_bytes -= len(old)
                    account.free_bytes += len(old)
            if (
                held >= most_messages
                or queue.held_bytes + length > most_bytes
                or length > account.free_bytes
            ):
                refused.append(first + index)
                refused_bytes += length
                continue
            fresh.append(head)
            held += 1
            queue.held_bytes += length
            account.free_bytes -= length
        taken = len(messages) - len(refused)
        taken_bytes = sum(map(len, messages)) - refused_bytes
        queue.memory += (taken_bytes + taken * BODY_OVERHEAD) / fanout + taken * SLOT_BYTES
        not_charged = (refused_bytes + len(refused) * BODY_OVERHEAD) / fanout
        self.memory = max(0.0, self.memory - not_charged - len(refused) * SLOT_BYTES)
        if dropped_ids:
            self._free_memory(queue, dropped_ids, dropped_heads, sum(map(len, dropped_heads)))
        gone = refused + dropped_ids
        if gone:
            queue.dropped += len(gone)
            self.journal.acked(queue, gone)

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
        queue.held_bytes -= size
        queue.account.free_bytes += size
        self._free_memory(queue, ids, heads, size)

    def _free_memory(self, queue: Queue, ids: Ids, heads: list[Message], size: int) -> None:
        """Give back the memory charged for these messages (`size` bytes encoded)."""
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
        queue.memory -= freed
        self.memory = max(0.0, self.memory - freed)

    def recount(self) -> None:
        """Count memory, bytes, and what each user owns anew, as after a recovery;
        set each queue's limits in force.

        The queue counts at publish are not kept across restarts: every
        message held is taken as published to its channel's queues of now.
        """
        self.memory = 0.0
        self.accounts = {}
        for channel in self.channels.values():
            fanout = max(1, len(channel.queues))
            channel.epochs = [0]
            channel.fanouts = [fanout]
            self.account(channel.owner).channels += 1
            for queue in channel.queues.values():
                held = queue.held()
                queue.held_bytes = sum(map(len, held))
                queue.memory = (queue.held_bytes + len(held) * BODY_OVERHEAD) / fanout + len(
                    held
                ) * SLOT_BYTES
                self.memory += queue.memory
                account = queue.account = self.account(queue.owner)
                account.queues += 1
                account.free_bytes -= queue.held_bytes
                self.apply_limits(queue)

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
