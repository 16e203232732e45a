"""`tcpmq check` and `tcpmq repair`: report damage in a store, salvage what is intact.

`check` reads every file without changing anything and replays it the way a
start would, so it finds exactly what would stop the broker: bad headers,
bad records with intact data after them, missing segments, a snapshot
without its END. A torn tail at the end of the last segment is reported but
is not a problem: the broker cuts it off at start.

`repair` moves each damaged file to `damaged/` inside the store (nothing is
deleted) and writes in its place a file holding every intact record: it
skips a damaged region by searching for the next record whose length and
checksum agree. Messages in a damaged region are lost; everything else is
kept. Segment numbers are closed up where one is missing.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .log import fsync_directory, segment_path
from .records import (
    HEADER,
    FormatError,
    Kind,
    NewerFormat,
    RecordType,
    encode_json,
    frame,
    header,
    read_header,
    resync,
    scan,
)
from .recovery import Replay, list_files

DAMAGED_DIR = "damaged"


@dataclass(slots=True)
class FileReport:
    path: Path
    size: int
    records: int = 0
    # (offset, reason) of each damaged region; a torn tail is listed apart.
    damage: list[tuple[int, str]] = field(default_factory=list)
    torn_tail: tuple[int, str] | None = None


@dataclass(slots=True)
class CheckReport:
    files: list[FileReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: A file written by a newer tcpmq: the store is not damaged, this build
    #: is too old for it (and must not repair it).
    newer: NewerFormat | None = None
    channels: int = 0
    queues: int = 0
    messages: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _ordered_files(directory: Path) -> tuple[int | None, list[tuple[int, Path, Kind]]]:
    files = list_files(directory)
    base = max(files.snapshots, default=None)
    ordered: list[tuple[int, Path, Kind]] = []
    if base is not None:
        ordered.append((base, files.snapshots[base], Kind.SNAPSHOT))
    for seq in sorted(files.segments):
        if base is None or seq >= base:
            ordered.append((seq, files.segments[seq], Kind.LOG))
    return base, ordered


#: How many times `check` lists the files again when one it listed has gone.
_LISTINGS = 20


def check(directory: Path) -> CheckReport:
    """Read the store in `directory` as a start would, changing nothing.

    On a live store a compaction may remove files between the listing and
    their reading (it writes the snapshot first, so nothing is lost): the
    check then starts over from a new listing.
    """
    for _ in range(_LISTINGS - 1):
        try:
            return _check_once(directory)
        except FileNotFoundError:
            continue
    return _check_once(directory)


def _check_once(directory: Path) -> CheckReport:
    report = CheckReport()
    if not directory.is_dir():
        report.problems.append(f"{directory}: no store here")
        return report
    base, ordered = _ordered_files(directory)
    replay = Replay()
    segments = [seq for seq, _, kind in ordered if kind is Kind.LOG]
    if base is not None and (not segments or segments[0] != base):
        report.problems.append(f"{directory}: segment {base} after the snapshot is missing")
    for previous, seq in itertools.pairwise(segments):
        if seq != previous + 1:
            report.problems.append(f"{directory}: segment {previous + 1} is missing")
    for seq, path, kind in ordered:
        data = path.read_bytes()
        file_report = FileReport(path, len(data))
        report.files.append(file_report)
        last = kind is Kind.LOG and seq == segments[-1]
        try:
            found_kind, found_seq = read_header(data, str(path))
            if found_kind is not kind or found_seq != seq:
                raise FormatError(str(path), 0, "header does not match the file name")
        except NewerFormat as exc:
            report.newer = exc
            report.problems.append(str(exc))
            continue
        except FormatError as exc:
            if last and len(data) < HEADER.size:
                file_report.torn_tail = (0, "incomplete header")
            else:
                file_report.damage.append((0, exc.reason))
                report.problems.append(str(exc))
            continue
        offset = HEADER.size
        while True:
            result = scan(data, offset)
            for record_offset, record_kind, body in result.records:
                try:
                    replay.apply(record_kind, body)
                except (ValueError, KeyError, IndexError) as exc:
                    reason = f"unreadable {record_kind.name} record: {exc}"
                    file_report.damage.append((record_offset, reason))
                    report.problems.append(f"{path}: offset {record_offset}: {reason}")
            file_report.records += len(result.records)
            damage = result.damage
            if damage is None or (last and damage.zeros):
                break  # zeros: space the writer filled ahead, not damage
            if last and damage.torn_tail:
                file_report.torn_tail = (damage.offset, damage.reason)
                break
            file_report.damage.append((damage.offset, damage.reason))
            report.problems.append(f"{path}: offset {damage.offset}: {damage.reason}")
            next_offset = resync(data, damage.offset + 1)
            if next_offset is None:
                break
            offset = next_offset
        if kind is Kind.SNAPSHOT and not replay.snapshot_complete:
            report.problems.append(f"{path}: offset {len(data)}: snapshot has no END record")
    report.channels = len(replay.channels)
    report.queues = len(replay.queues)
    report.messages = len(
        {(q.record["channel"], m) for q in replay.queues.values() for m in q.messages}
    )
    return report


@dataclass(slots=True)
class RepairReport:
    repaired: list[Path] = field(default_factory=list)
    dropped_bytes: int = 0
    renumbered: list[tuple[Path, Path]] = field(default_factory=list)


def repair(directory: Path) -> RepairReport:
    """Rewrite each damaged file with its intact records; originals go to `damaged/`."""
    result = RepairReport()
    report = check(directory)
    if report.ok:
        return result
    if report.newer is not None:
        raise report.newer  # rewriting it with this build's records would lose data
    damaged_dir = directory / DAMAGED_DIR
    damaged_dir.mkdir(mode=0o700, exist_ok=True)
    for file_report in report.files:
        if not file_report.damage:
            continue
        path = file_report.path
        data = path.read_bytes()
        kind = Kind.SNAPSHOT if path.suffix == ".snap" else Kind.LOG
        seq = int(path.stem)
        kept = _intact_records(data)
        if kind is Kind.SNAPSHOT:
            kept = _complete_snapshot(kept)
        salvaged = header(kind, seq) + b"".join(kept)
        shutil.copy2(path, damaged_dir / path.name)
        _write_atomically(path, salvaged)
        result.repaired.append(path)
        result.dropped_bytes += max(0, len(data) - len(salvaged))
    result.renumbered = _close_gaps(directory)
    fsync_directory(directory)
    return result


def _intact_records(data: bytes) -> list[bytes]:
    kept: list[bytes] = []
    offset: int | None = HEADER.size
    replay = Replay()
    while offset is not None:
        result = scan(data, offset)
        for _, kind, body in result.records:
            try:
                replay.apply(kind, body)
            except (ValueError, KeyError, IndexError):
                continue  # intact bytes, unusable content: drop the record
            kept.append(frame(bytes((kind,)) + bytes(body)))
        if result.damage is None or result.damage.zeros:
            break
        offset = resync(data, result.damage.offset + 1)
    return kept


def _complete_snapshot(kept: list[bytes]) -> list[bytes]:
    replay = Replay()
    for record in kept:
        for _, kind, body in scan(record, 0).records:
            replay.apply(kind, body)
    if replay.snapshot_complete:
        return kept
    next_uid = max([replay.next_uid, *(uid + 1 for uid in replay.queues)])
    end = encode_json(RecordType.END, {"next_uid": next_uid, "repaired": True})
    return [*kept, end]


def _close_gaps(directory: Path) -> list[tuple[Path, Path]]:
    base, ordered = _ordered_files(directory)
    segments = [(seq, path) for seq, path, kind in ordered if kind is Kind.LOG]
    expected = base if base is not None else (segments[0][0] if segments else 1)
    moved: list[tuple[Path, Path]] = []
    for seq, path in segments:
        if seq != expected:
            data = bytearray(path.read_bytes())
            data[: HEADER.size] = header(Kind.LOG, expected)
            target = segment_path(directory, expected)
            _write_atomically(target, bytes(data))
            path.unlink()
            moved.append((path, target))
        expected += 1
    if base is not None and not segments:
        # The snapshot needs its first segment to exist, even empty.
        _write_atomically(segment_path(directory, base), header(Kind.LOG, base))
    return moved


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
