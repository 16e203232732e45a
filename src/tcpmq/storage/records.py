"""The on-disk record format, as bytes in and bytes out: no I/O here.

A storage file (a log segment or a snapshot) is a header followed by records:

    header:  b"TCPMQ" kind(1 byte: b"L" log, b"S" snapshot) version(u16) seq(u64)
    record:  length(u32) crc32(u32) payload(length bytes)
    payload: type(u8) body

All integers are little-endian. The CRC-32 covers the payload, so a record
whose bytes changed is detected. `scan` walks a buffer and stops at the first
record that is incomplete or fails its checksum, saying where and whether
that damage can only be a torn write at the end (an incomplete record, or a
bad last record followed by nothing but zeros) or is corruption with intact
data after it, which must never be accepted silently. Zeros where the next
record would start are space the log writer filled ahead of its writes
(see log.py): in the last segment, that is where the log ends.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

MAGIC = b"TCPMQ"
# Version 2 added delivery counts (DELIVERED, DELIVERED_RANGE, ATTEMPTS);
# version 3 channel permissions (`access` and `grants` in CHANNEL records: one
# without them is a public channel, as every channel was before). Older files
# are read as they are; files created from now on say 3, and the log never
# appends to a segment whose header says an older version (see recovery.py).
FORMAT_VERSION = 3
READABLE_VERSIONS = frozenset({1, 2, 3})
HEADER = struct.Struct("<5scHQ")
FRAME = struct.Struct("<II")
# No record is larger: a publish record holds at most max_batch messages of
# at most max_frame_bytes together, far below this. A length above it means
# the length itself is damaged.
MAX_RECORD_BYTES = 256 * 1024 * 1024

_U64 = struct.Struct("<Q")
_ID_COUNT = struct.Struct("<QI")
_MESSAGE = struct.Struct("<QI")


class Kind(enum.Enum):
    LOG = b"L"
    SNAPSHOT = b"S"


class RecordType(enum.IntEnum):
    CHANNEL = 1  # JSON: a channel's identity (written when it is created)
    CHANNEL_DROP = 2  # u64 channel uid
    QUEUE = 3  # JSON: a queue's identity and settings (created or changed)
    QUEUE_DROP = 4  # u64 queue uid
    PUBLISH = 5  # channel uid, messages: lands in every queue of the channel
    ACK = 6  # queue uid, message ids: removed from that queue for good
    MESSAGES = 7  # snapshot: channel uid, messages still held by some queue
    CONTENT = 8  # snapshot: queue uid, the ids it holds, in order
    END = 9  # snapshot: JSON counts; a snapshot without it is incomplete
    DELIVERED = 10  # queue uid, message ids: each delivered once more
    DELIVERED_RANGE = 11  # queue uid, first id, count: the same for consecutive ids
    ATTEMPTS = 12  # snapshot: queue uid, (id, deliveries) of messages delivered before


class FormatError(Exception):
    """A storage file cannot be read: names the file and the offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class NewerFormat(FormatError):
    """A file written by a newer tcpmq: not damage, and nothing to repair."""

    def __init__(self, path: str, version: int) -> None:
        super().__init__(
            path,
            0,
            f"written by a newer tcpmq (format version {version}; this build reads 1 to "
            f"{FORMAT_VERSION})",
        )
        self.version = version


def header(kind: Kind, seq: int) -> bytes:
    return HEADER.pack(MAGIC, kind.value, FORMAT_VERSION, seq)


def read_header(data: bytes | memoryview, path: str) -> tuple[Kind, int]:
    """The kind and sequence number of a file's header.

    Raises:
        FormatError: not a tcpmq storage file, or a version this build cannot read.
    """
    if len(data) < HEADER.size:
        raise FormatError(path, 0, "file is shorter than its header")
    magic, kind, version, seq = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(path, 0, "not a tcpmq storage file")
    if version > FORMAT_VERSION:
        raise NewerFormat(path, version)
    if version not in READABLE_VERSIONS:
        raise FormatError(
            path, 0, f"format version {version}, this build reads 1 to {FORMAT_VERSION}"
        )
    try:
        return Kind(kind), seq
    except ValueError:
        raise FormatError(path, 0, f"unknown file kind {kind!r}") from None


def header_version(data: bytes | memoryview) -> int:
    """The format version in a header that `read_header` accepted."""
    return int(HEADER.unpack_from(data)[2])


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


# -- record bodies -------------------------------------------------------


def encode_json(kind: RecordType, value: dict[str, object]) -> bytes:
    return frame(bytes((kind,)) + orjson.dumps(value))


def encode_uid(kind: RecordType, uid: int) -> bytes:
    return frame(bytes((kind,)) + _U64.pack(uid))


def encode_messages(kind: RecordType, owner_uid: int, messages: list[tuple[int, bytes]]) -> bytes:
    """A PUBLISH or MESSAGES record: (id, stored head) pairs of one channel."""
    parts = [bytes((kind,)), _ID_COUNT.pack(owner_uid, len(messages))]
    pack = _MESSAGE.pack
    for message_id, head in messages:
        parts.append(pack(message_id, len(head)))
        parts.append(head)
    return frame(b"".join(parts))


# A PUBLISH record of one message, packed in one go: the common case.
_PUBLISH_ONE = struct.Struct("<BQIQI")


def encode_publish(channel_uid: int, first_id: int, messages: list[bytes]) -> bytes:
    """A PUBLISH record: stored heads of one channel, with ids from `first_id` on."""
    if len(messages) == 1:
        head = messages[0]
        return frame(
            _PUBLISH_ONE.pack(RecordType.PUBLISH, channel_uid, 1, first_id, len(head)) + head
        )
    return encode_messages(RecordType.PUBLISH, channel_uid, list(enumerate(messages, first_id)))


def encode_ids(kind: RecordType, owner_uid: int, ids: list[int]) -> bytes:
    """An ACK or CONTENT record: message ids of one queue."""
    count = len(ids)
    return frame(
        bytes((kind,)) + _ID_COUNT.pack(owner_uid, count) + struct.pack(f"<{count}Q", *ids)
    )


_RANGE = struct.Struct("<BQQI")


def encode_delivered(queue_uid: int, ids: range | list[int]) -> bytes:
    """A DELIVERED record, or for consecutive ids (nearly every pull) a fixed-size range."""
    if isinstance(ids, range):
        return frame(_RANGE.pack(RecordType.DELIVERED_RANGE, queue_uid, ids.start, len(ids)))
    return encode_ids(RecordType.DELIVERED, queue_uid, ids)


def decode_range(body: memoryview) -> tuple[int, range]:
    queue_uid, first, count = struct.unpack("<QQI", body)
    return queue_uid, range(first, first + count)


def encode_attempts(queue_uid: int, attempts: list[tuple[int, int]]) -> bytes:
    """An ATTEMPTS record: (message id, deliveries so far) pairs of one queue."""
    flat = [number for pair in attempts for number in pair]
    return frame(
        bytes((RecordType.ATTEMPTS,))
        + _ID_COUNT.pack(queue_uid, len(attempts))
        + struct.pack(f"<{len(flat)}Q", *flat)
    )


def decode_attempts(body: memoryview) -> tuple[int, list[tuple[int, int]]]:
    queue_uid, count = _ID_COUNT.unpack_from(body)
    if len(body) != _ID_COUNT.size + 16 * count:
        raise ValueError("attempts record length does not match its count")
    flat = struct.unpack_from(f"<{2 * count}Q", body, _ID_COUNT.size)
    return queue_uid, list(zip(flat[::2], flat[1::2], strict=True))


def decode_json(body: memoryview) -> dict[str, object]:
    value = orjson.loads(body)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def decode_uid(body: memoryview) -> int:
    (uid,) = _U64.unpack(body)
    return int(uid)


def decode_messages(body: memoryview) -> tuple[int, list[tuple[int, bytes]]]:
    owner_uid, count = _ID_COUNT.unpack_from(body)
    offset = _ID_COUNT.size
    messages = []
    unpack = _MESSAGE.unpack_from
    for _ in range(count):
        message_id, size = unpack(body, offset)
        offset += _MESSAGE.size
        messages.append((message_id, bytes(body[offset : offset + size])))
        offset += size
    if offset != len(body):
        raise ValueError("message record length does not match its contents")
    return owner_uid, messages


def decode_ids(body: memoryview) -> tuple[int, tuple[int, ...]]:
    owner_uid, count = _ID_COUNT.unpack_from(body)
    if len(body) != _ID_COUNT.size + 8 * count:
        raise ValueError("id record length does not match its count")
    return owner_uid, struct.unpack_from(f"<{count}Q", body, _ID_COUNT.size)


# -- scanning ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Damage:
    """Where a scan stopped early, and whether it can only be a torn write."""

    offset: int
    reason: str
    torn_tail: bool
    #: Nothing but zeros from `offset` on: the preallocated end of the log.
    zeros: bool = False


@dataclass(slots=True)
class Scan:
    """Records found before `end`; `damage` says why the scan stopped, if early."""

    records: list[tuple[int, RecordType, memoryview]]
    end: int
    damage: Damage | None = None


def scan(data: bytes | memoryview, start: int = HEADER.size) -> Scan:
    """Every intact record from `start`: (offset, type, body) triples."""
    view = memoryview(data)
    size = len(view)
    records: list[tuple[int, RecordType, memoryview]] = []
    offset = start
    unpack = FRAME.unpack_from
    crc32 = zlib.crc32
    while offset < size:
        if size - offset < FRAME.size:
            # Too short to be anything but the start of an unfinished write.
            zeros = all_zero(view[offset:])
            damage = Damage(offset, "incomplete record", torn_tail=True, zeros=zeros)
            return Scan(records, offset, damage)
        length, checksum = unpack(view, offset)
        body_start = offset + FRAME.size
        end = body_start + length
        if length == 0 and all_zero(view[offset:]):
            damage = Damage(offset, "zero-filled tail", torn_tail=True, zeros=True)
            return Scan(records, offset, damage)
        if length == 0 or length > MAX_RECORD_BYTES:
            return Scan(records, offset, _damage(view, offset, f"implausible length {length}"))
        if end > size:
            # The write of this record did not finish: nothing can follow it.
            return Scan(records, offset, Damage(offset, "incomplete record", torn_tail=True))
        payload = view[body_start:end]
        if crc32(payload) != checksum:
            return Scan(records, offset, _damage(view, offset, "checksum mismatch", end))
        try:
            kind = RecordType(payload[0])
        except ValueError:
            return Scan(records, offset, _damage(view, offset, f"unknown record type {payload[0]}"))
        records.append((offset, kind, payload[1:]))
        offset = end
    return Scan(records, offset)


def _damage(view: memoryview, offset: int, reason: str, end: int | None = None) -> Damage:
    # A torn write leaves a bad last record, or zeros where the filesystem
    # extended the file but the data never arrived. Anything else after the
    # bad spot means the damage is in the middle.
    rest = view[offset if end is None else end :]
    torn = (end is not None and end == len(view)) or all_zero(rest)
    return Damage(offset, reason, torn_tail=torn)


def all_zero(view: memoryview) -> bool:
    return view == bytes(len(view))


def resync(data: bytes | memoryview, start: int) -> int | None:
    """The next offset at or after `start` where an intact record begins, if any.

    Used by `repair` to skip a damaged region; a random match of both a
    plausible length and a CRC-32 is vanishingly unlikely.
    """
    view = memoryview(data)
    size = len(view)
    for offset in range(start, size - FRAME.size):
        length, checksum = FRAME.unpack_from(view, offset)
        end = offset + FRAME.size + length
        if 0 < length <= MAX_RECORD_BYTES and end <= size:
            payload = view[offset + FRAME.size : end]
            if zlib.crc32(payload) == checksum and payload[0] in _TYPES:
                return offset
    return None


_TYPES = frozenset(int(kind) for kind in RecordType)


def iter_frames(records: list[tuple[int, RecordType, memoryview]]) -> Iterator[bytes]:
    """The framed bytes of scanned records again (for `repair`)."""
    for _, kind, body in records:
        yield frame(bytes((kind,)) + bytes(body))
