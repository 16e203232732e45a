"""Snapshots: the whole live state in one file, so the log before it can go.

Theory of operation: compaction seals the current log segment (say it ends
before segment N) and, in the same event-loop step, captures the broker's
state: the channel and queue records and, per queue, the message objects it
holds (cheap: references, not copies; messages are immutable). A worker
thread then writes that capture to `N.snap` — through a temporary name,
fsynced, renamed, the directory fsynced — and only then are the segments
before N and older snapshots deleted. Recovery loads the newest snapshot and
replays the segments from N on. A crash at any point leaves either the old
snapshot with all its segments, or the new one: nothing is lost.

A snapshot stores each message once per channel (MESSAGES records) and each
queue as a list of ids (CONTENT records), so fan-out does not multiply it.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from pathlib import Path

from ..broker import Broker, Message
from ..wire import head_id
from .log import fsync_directory
from .records import (
    Kind,
    RecordType,
    encode_attempts,
    encode_ids,
    encode_json,
    encode_messages,
    header,
)

SNAPSHOT_SUFFIX = ".snap"
# Records of bounded size keep the reader's memory flat.
MESSAGES_PER_RECORD = 1000
IDS_PER_RECORD = 10000


def snapshot_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:016d}{SNAPSHOT_SUFFIX}"


@dataclass(frozen=True, slots=True)
class QueueCapture:
    record: dict[str, object]
    messages: list[Message]
    # (id, deliveries so far) of the messages delivered before.
    attempts: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ChannelCapture:
    record: dict[str, object]
    queues: list[QueueCapture]


@dataclass(frozen=True, slots=True)
class Capture:
    seq: int
    next_uid: int
    channels: list[ChannelCapture]


def capture(broker: Broker, seq: int) -> Capture:
    """The broker's state now, for a snapshot covering the log before segment `seq`."""
    return Capture(
        seq,
        broker.next_uid,
        [
            ChannelCapture(
                channel.record(),
                [
                    QueueCapture(
                        queue.record(),
                        queue.held(),
                        sorted((entry.id, entry.attempts) for entry in queue.entries()),
                    )
                    for queue in channel.queues.values()
                ],
            )
            for channel in broker.channels.values()
        ],
    )


def write_snapshot(directory: Path, state: Capture) -> int:
    """Write `state` durably as snapshot `state.seq`; returns its size in bytes."""
    path = snapshot_path(directory, state.seq)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        size = _write(tmp, state)
    except OSError:
        # A full disk: the half-written file would only take the space the
        # log needs. The old snapshot and the whole log are intact.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_directory(directory)
    return size


def _write(tmp: Path, state: Capture) -> int:
    counts = {"channels": 0, "queues": 0, "messages": 0}
    with open(tmp, "wb", buffering=1024 * 1024, opener=_private) as out:
        out.write(header(Kind.SNAPSHOT, state.seq))
        for channel in state.channels:
            channel_uid = channel.record["uid"]
            assert isinstance(channel_uid, int)
            out.write(encode_json(RecordType.CHANNEL, channel.record))
            counts["channels"] += 1
            # Each message once, however many queues hold it: the queues' lists
            # are in id order, so a merge brings the copies together. No table
            # of all ids: the ints made here die at once, so they cannot pin
            # memory that the broker allocates meanwhile (RSS per message).
            chunk: list[tuple[int, bytes]] = []
            previous = -1
            merged = heapq.merge(
                *(
                    ((head_id(message), message) for message in queue.messages)
                    for queue in channel.queues
                )
            )
            for message_id, message in merged:
                if message_id == previous:
                    continue
                previous = message_id
                chunk.append((message_id, message))
                if len(chunk) == MESSAGES_PER_RECORD:
                    out.write(encode_messages(RecordType.MESSAGES, channel_uid, chunk))
                    counts["messages"] += len(chunk)
                    chunk = []
            if chunk:
                out.write(encode_messages(RecordType.MESSAGES, channel_uid, chunk))
                counts["messages"] += len(chunk)
            for queue in channel.queues:
                queue_uid = queue.record["uid"]
                assert isinstance(queue_uid, int)
                out.write(encode_json(RecordType.QUEUE, queue.record))
                counts["queues"] += 1
                held = queue.messages
                for start in range(0, len(held), IDS_PER_RECORD):
                    ids = [head_id(message) for message in held[start : start + IDS_PER_RECORD]]
                    out.write(encode_ids(RecordType.CONTENT, queue_uid, ids))
                attempts = queue.attempts
                for start in range(0, len(attempts), IDS_PER_RECORD):
                    pairs = attempts[start : start + IDS_PER_RECORD]
                    out.write(encode_attempts(queue_uid, pairs))
        out.write(encode_json(RecordType.END, {"next_uid": state.next_uid, **counts}))
        out.flush()
        os.fsync(out.fileno())
        return out.tell()


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
