"""Rebuilding the broker from disk at startup: newest snapshot, then the log after it.

Replaying the log repeats what the broker did, in the order it did it: a
PUBLISH lands in every queue its channel has at that point of the log, an
ACK removes ids from one queue, a DELIVERED record counts one more delivery
of its ids in one queue, a drop forgets a channel or queue (its uid is never
reused, so later records cannot be misread as its). Every message comes back
ready; deliveries that were in flight are delivered again (at least once),
and a message delivered before keeps its count, so its next `attempt` is one
higher than any a consumer saw.

Damage: the last segment may end in a torn write (the process or machine
died mid-append); that tail is cut off (zeros after the last record are not
damage: the writer fills space ahead of its writes, see log.py) and the broker starts with every
complete record, which includes every record a reply was sent for (with
`fsync=always`). Any other damage — a bad record with intact data after it,
a damaged snapshot, a missing segment — stops the start with a message
naming the file and offset: `tcpmq check` and `tcpmq repair` take over.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..broker import (
    DROP_OLDEST,
    OVERFLOWS,
    PRIVATE,
    PUBLIC,
    REJECT,
    RIGHTS,
    Broker,
    Channel,
    Entry,
    Message,
    Queue,
)
from .log import SEGMENT_SUFFIX, create_segment, fsync_directory
from .records import (
    FORMAT_VERSION,
    HEADER,
    FormatError,
    Kind,
    RecordType,
    Scan,
    decode_attempts,
    decode_ids,
    decode_json,
    decode_messages,
    decode_range,
    decode_uid,
    header,
    header_version,
    read_header,
    scan,
)
from .snapshot import SNAPSHOT_SUFFIX

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _QueueState:
    record: dict[str, object]
    messages: dict[int, Message] = field(default_factory=dict)
    # Deliveries so far of the held messages delivered at least once.
    attempts: dict[int, int] = field(default_factory=dict)

    def count_deliveries(self, ids: Iterable[int]) -> None:
        held = self.messages
        attempts = self.attempts
        for message_id in ids:
            if message_id in held:
                attempts[message_id] = attempts.get(message_id, 0) + 1


@dataclass(slots=True)
class _ChannelState:
    record: dict[str, object]
    next_id: int
    published: int
    queues: dict[int, _QueueState] = field(default_factory=dict)


class Replay:
    """Broker state rebuilt record by record; `build` turns it into a `Broker`'s."""

    def __init__(self) -> None:
        self.channels: dict[int, _ChannelState] = {}
        self.queues: dict[int, _QueueState] = {}
        self.next_uid = 1
        self.snapshot_complete = False
        # Snapshot only: each channel's messages by id, until CONTENT records claim them.
        self._tables: dict[int, dict[int, Message]] = {}

    def apply(self, kind: RecordType, body: memoryview) -> None:
        if kind is RecordType.PUBLISH:
            channel_uid, messages = decode_messages(body)
            channel = self.channels.get(channel_uid)
            if channel is None:
                return  # dropped later; its records are dead
            queues = [queue.messages for queue in channel.queues.values()]
            for message_id, head in messages:
                for held in queues:
                    held[message_id] = head
            if messages:
                channel.next_id = max(channel.next_id, messages[-1][0] + 1)
                channel.published += len(messages)
        elif kind is RecordType.ACK:
            queue_uid, ids = decode_ids(body)
            queue = self.queues.get(queue_uid)
            if queue is not None:
                held = queue.messages
                attempts = queue.attempts
                for message_id in ids:
                    held.pop(message_id, None)
                    attempts.pop(message_id, None)
        elif kind is RecordType.DELIVERED_RANGE:
            queue_uid, span = decode_range(body)
            queue = self.queues.get(queue_uid)
            if queue is not None:
                queue.count_deliveries(span)
        elif kind is RecordType.DELIVERED:
            queue_uid, ids = decode_ids(body)
            queue = self.queues.get(queue_uid)
            if queue is not None:
                queue.count_deliveries(ids)
        elif kind is RecordType.ATTEMPTS:
            queue_uid, pairs = decode_attempts(body)
            self.queues[queue_uid].attempts.update(pairs)
        elif kind is RecordType.CHANNEL:
            record = decode_json(body)
            uid = _int(record, "uid")
            _public(record)  # checked here, where an error names the record
            _grants(record)
            existing_channel = self.channels.get(uid)
            if existing_channel is not None:
                existing_channel.record = record  # a new owner; its queues stay
                return
            next_id = _int(record, "next_id")
            self.channels[uid] = _ChannelState(record, next_id, _int(record, "published"))
            self._bump(uid)
        elif kind is RecordType.CHANNEL_DROP:
            channel = self.channels.pop(decode_uid(body), None)
            if channel is not None:
                for uid in channel.queues:
                    del self.queues[uid]
        elif kind is RecordType.QUEUE:
            record = decode_json(body)
            uid = _int(record, "uid")
            existing = self.queues.get(uid)
            if existing is not None:
                existing.record = record  # settings changed
                return
            owner = self.channels.get(_int(record, "channel"))
            if owner is not None:
                self.queues[uid] = owner.queues[uid] = _QueueState(record)
            self._bump(uid)
        elif kind is RecordType.QUEUE_DROP:
            queue = self.queues.pop(decode_uid(body), None)
            if queue is not None:
                channel = self.channels.get(_int(queue.record, "channel"))
                if channel is not None:
                    channel.queues.pop(_int(queue.record, "uid"), None)
        elif kind is RecordType.MESSAGES:
            channel_uid, messages = decode_messages(body)
            table = self._tables.setdefault(channel_uid, {})
            for message_id, head in messages:
                table[message_id] = head
        elif kind is RecordType.CONTENT:
            queue_uid, ids = decode_ids(body)
            queue = self.queues[queue_uid]
            table = self._tables[_int(queue.record, "channel")]
            held = queue.messages
            for message_id in ids:
                held[message_id] = table[message_id]
        elif kind is RecordType.END:
            record = decode_json(body)
            self.next_uid = max(self.next_uid, _int(record, "next_uid"))
            self.snapshot_complete = True
            self._tables.clear()

    def _bump(self, uid: int) -> None:
        self.next_uid = max(self.next_uid, uid + 1)

    def build(self, broker: Broker) -> int:
        """Install the rebuilt state in an empty `broker`; returns the messages held."""
        held_total = 0
        for state in self.channels.values():
            record = state.record
            name = _str(record, "name")
            channel = Channel(
                name,
                _str(record, "owner"),
                _float(record, "created_at"),
                _int(record, "uid"),
                public=_public(record),
                grants=_grants(record),
            )
            channel.next_id = state.next_id
            channel.published = state.published
            for queue_state in state.queues.values():
                q = queue_state.record
                queue = Queue(
                    name,
                    _str(q, "name"),
                    _str(q, "owner"),
                    _float(q, "ack_timeout"),
                    _float(q, "created_at"),
                    _int(q, "uid"),
                    channel.uid,
                )
                # Settings added later: a store written before them lacks them.
                # Its queues get the default a new queue gets (reject for the
                # channel's owner), and the server's limits.
                default = REJECT if queue.owner == channel.owner else DROP_OLDEST
                queue.overflow = _overflow(q, default)
                queue.own_max_messages = _optional_int(q, "max_messages")
                queue.own_max_bytes = _optional_int(q, "max_bytes")
                # Ids arrive in publish order, so the dict is already in id order.
                # Messages delivered before go to `retry` with their counts;
                # their ids are below every never-delivered one (a pull takes
                # the lowest ready ids), so the queue's order holds.
                attempts = queue_state.attempts
                if attempts:
                    queue.fresh = deque(
                        head
                        for message_id, head in queue_state.messages.items()
                        if message_id not in attempts
                    )
                    queue.retry = sorted(
                        (message_id, Entry(message_id, queue_state.messages[message_id], n, 0.0))
                        for message_id, n in attempts.items()
                    )
                else:
                    queue.fresh = deque(queue_state.messages.values())
                held_total += len(queue_state.messages)
                channel.queues[queue.name] = queue
            broker.channels[name] = channel
        broker.next_uid = self.next_uid
        broker.recount()
        return held_total


def _public(record: dict[str, object]) -> bool:
    # Records written before format 3 have no `access`: every channel was
    # open to every user then, and stays so.
    access = record.get("access", PUBLIC)
    if access not in (PUBLIC, PRIVATE):
        raise ValueError(f"access: expected {PUBLIC!r} or {PRIVATE!r}")
    return access == PUBLIC


def _grants(record: dict[str, object]) -> dict[str, frozenset[str]]:
    grants = record.get("grants", {})
    if not isinstance(grants, dict):
        raise ValueError("grants: expected an object")
    found: dict[str, frozenset[str]] = {}
    for user, rights in grants.items():
        if not isinstance(rights, list) or not rights or not set(rights) <= set(RIGHTS):
            raise ValueError(f"grants.{user}: expected a list of rights {', '.join(RIGHTS)}")
        found[user] = frozenset(rights)
    return found


def _int(record: dict[str, object], key: str) -> int:
    value = record[key]
    if not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer")
    return value


def _optional_int(record: dict[str, object], key: str) -> int | None:
    return _int(record, key) if key in record else None


def _overflow(record: dict[str, object], default: str) -> str:
    value = record.get("overflow", default)
    if value not in OVERFLOWS:
        raise ValueError(f"overflow: expected one of {', '.join(OVERFLOWS)}")
    assert isinstance(value, str)
    return value


def _float(record: dict[str, object], key: str) -> float:
    value = record[key]
    if not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number")
    return float(value)


def _str(record: dict[str, object], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value


# -- files ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreFiles:
    segments: dict[int, Path]
    snapshots: dict[int, Path]
    temporary: list[Path]


def list_files(directory: Path) -> StoreFiles:
    segments: dict[int, Path] = {}
    snapshots: dict[int, Path] = {}
    temporary: list[Path] = []
    for path in directory.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            temporary.append(path)
        elif name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
            segments[int(name[: -len(SEGMENT_SUFFIX)])] = path
        elif name.endswith(SNAPSHOT_SUFFIX) and name[: -len(SNAPSHOT_SUFFIX)].isdigit():
            snapshots[int(name[: -len(SNAPSHOT_SUFFIX)])] = path
    return StoreFiles(segments, snapshots, temporary)


@dataclass(frozen=True, slots=True)
class Recovered:
    seq: int  # the segment to append to
    size: int  # its size in bytes
    snapshot_bytes: int
    log_bytes: int  # bytes in the segments after the snapshot
    messages: int  # messages held by queues
    torn_bytes: int  # bytes of a torn tail that were cut off


def recover(directory: Path, broker: Broker) -> Recovered:
    """Load the store in `directory` (created if empty) into `broker`.

    Raises:
        FormatError: damage that is not a torn tail, naming the file and offset.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = list_files(directory)
    for path in files.temporary:
        path.unlink()  # an interrupted snapshot; the files it would replace are intact
    replay = Replay()
    base = max(files.snapshots, default=None)
    snapshot_bytes = 0
    if base is not None:
        snapshot_bytes = _load_snapshot(files.snapshots[base], base, replay)
        for seq, path in files.snapshots.items():
            if seq < base:
                path.unlink()  # superseded; its removal was interrupted
        for seq, path in files.segments.items():
            if seq < base:
                path.unlink()
    seqs = sorted(seq for seq in files.segments if base is None or seq >= base)
    if base is not None and (not seqs or seqs[0] != base):
        raise FormatError(str(directory), 0, f"segment {base} after the snapshot is missing")
    for previous, seq in itertools.pairwise(seqs):
        if seq != previous + 1:
            raise FormatError(str(directory), 0, f"segment {previous + 1} is missing")
    log_bytes = 0
    torn_bytes = 0
    size = 0
    for seq in seqs:
        path = files.segments[seq]
        last = seq == seqs[-1]
        size, torn = _replay_segment(path, seq, replay, last)
        log_bytes += size
        torn_bytes += torn
    if seqs and _older_format(files.segments[seqs[-1]]):
        # Never append records of this format to a file whose header says an
        # older one (which an older build would misread): start a new segment.
        seq = seqs[-1] + 1
        os.close(create_segment(directory, seq))
        fsync_directory(directory)
        size = HEADER.size
    elif seqs:
        seq = seqs[-1]
    else:
        seq = 1 if base is None else base
        os.close(create_segment(directory, seq))
        fsync_directory(directory)
        size = HEADER.size
    messages = replay.build(broker)
    return Recovered(seq, size, snapshot_bytes, log_bytes, messages, torn_bytes)


def _older_format(path: Path) -> bool:
    with open(path, "rb") as segment:
        return header_version(segment.read(HEADER.size)) < FORMAT_VERSION


def _load_snapshot(path: Path, seq: int, replay: Replay) -> int:
    data = path.read_bytes()
    kind, found = read_header(data, str(path))
    if kind is not Kind.SNAPSHOT or found != seq:
        raise FormatError(str(path), 0, "header does not match the file name")
    result = scan(data)
    if result.damage is not None:
        raise FormatError(str(path), result.damage.offset, result.damage.reason)
    _apply_all(path, result, replay)
    if not replay.snapshot_complete:
        raise FormatError(str(path), len(data), "snapshot has no END record")
    return len(data)


def _replay_segment(path: Path, seq: int, replay: Replay, last: bool) -> tuple[int, int]:
    """Apply one segment; returns its (possibly truncated) size and the bytes cut off."""
    data = path.read_bytes()
    if last and len(data) < HEADER.size:
        # Died while creating the segment: start it again.
        _truncate(path, 0)
        with open(path, "ab") as out:
            out.write(header(Kind.LOG, seq))
            out.flush()
            os.fsync(out.fileno())
        return HEADER.size, len(data)
    kind, found = read_header(data, str(path))
    if kind is not Kind.LOG or found != seq:
        raise FormatError(str(path), 0, "header does not match the file name")
    result = scan(data)
    _apply_all(path, result, replay)
    damage = result.damage
    if damage is None:
        return len(data), 0
    if not (last and damage.torn_tail):
        raise FormatError(str(path), damage.offset, damage.reason)
    if damage.zeros:
        # Space the writer had filled ahead of its writes: the normal end.
        _truncate(path, damage.offset)
        return damage.offset, 0
    log.warning(
        "%s: cut off a torn write of %d bytes at offset %d (%s)",
        path,
        len(data) - damage.offset,
        damage.offset,
        damage.reason,
    )
    _truncate(path, damage.offset)
    return damage.offset, len(data) - damage.offset


def _apply_all(path: Path, result: Scan, replay: Replay) -> None:
    for offset, record_kind, body in result.records:
        try:
            replay.apply(record_kind, body)
        except (ValueError, KeyError, IndexError) as exc:
            # Intact bytes that make no sense: never guess, stop.
            reason = f"unreadable {record_kind.name} record: {exc}"
            raise FormatError(str(path), offset, reason) from exc


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
