"""The append-only log on disk: segment files, the fsync policy, group commit.

Theory of operation: records are appended to an in-memory buffer while the
event loop handles requests; once per loop iteration the buffer goes to the
current segment file with one `write`. Positions are counted in bytes over
the whole log (`appended`), so "is this reply's record on disk?" is one
comparison with `durable`.

Group commit (policy `always`): one thread of our own runs `fdatasync` for
all bytes written so far; whatever is appended while it runs goes into the
next sync, which the thread starts the moment the previous one ends, without
a round trip through the event loop. However many connections publish at
once, each sync covers all of them, and a reply waits at most for the sync
in progress plus its own. The thread tells the loop of each finished sync
with one `call_soon_threadsafe`, and the loop wakes it only when it is idle:
on this path every thread switch costs more than the Python around it.
With `interval` the thread syncs every `fsync_interval` seconds and replies
do not wait; with `never` the OS decides when data reaches the disk.

Preallocation: an fdatasync after a write that extends the file must also
commit the new file size through the filesystem's journal; one after
overwriting blocks the file already has need not, and takes about half as
long (0.09 vs 0.15 ms on a virtio disk). So while syncing is on, the writer
keeps up to `PREALLOCATE_BYTES` of zeros written ahead of its position and
overwrites them; recovery reads zeros where a record would start as the end
of the log. A sealed segment and a cleanly closed one are cut to their
records and synced first, so only the last segment ever ends in zeros.

A segment is sealed once it exceeds `segment_bytes`; the next one starts
with the next sequence number. Sealed segments are deleted when a snapshot
(see snapshot.py) covers them.

Failures (a full disk, a quota, a file size limit, an I/O error, no file
descriptor left) never end the process, and never let a reply claim what did
not happen. A write that fails keeps its bytes in the buffer; the log is
*stalled* and writes nothing more until `retry` (called by the store's disk
probe) writes them. A sync that fails may have lost the pages it was syncing
(the kernel can drop them and report success to the next fsync), so the
writer keeps every chunk written since the last good sync and, on `retry`,
writes them again at their offsets and syncs them anew; until that sync
succeeds nothing new is written and `durable` does not move. A segment that
cannot be sealed or created (ENOSPC, EMFILE) leaves the log in the current
segment, past `segment_bytes`, until a later roll succeeds. While stalled,
replies wait for the disk as always; `stalled` says why, and the owner hears
of each change through `on_health_change`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .records import HEADER, Kind, header
from .synctimes import SyncTimes

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".log"

# How far ahead of its writes the log keeps zeros: large enough that extending
# the file is rare, small enough that the sync which carries it stays short.
PREALLOCATE_BYTES = 1024 * 1024
_ZEROS = memoryview(bytes(PREALLOCATE_BYTES))


class FsyncPolicy(enum.StrEnum):
    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


def segment_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:016d}{SEGMENT_SUFFIX}"


def fsync_directory(directory: Path) -> None:
    """Make a file's creation, rename or removal in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(directory: Path, seq: int) -> int:
    """Create segment `seq` with its header; returns its fd, open for writing.

    Raises:
        OSError: nothing was left behind (a half-made segment is removed).
    """
    path = segment_path(directory, seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        data = header(Kind.LOG, seq)
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write of a segment header")
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return fd


class LogWriter:
    def __init__(
        self,
        directory: Path,
        *,
        seq: int,
        size: int,
        policy: FsyncPolicy,
        fsync_interval: float,
        segment_bytes: int,
        on_health_change: Callable[[], None],
    ) -> None:
        """Append to segment `seq`, which exists and holds `size` bytes."""
        self.directory = directory
        self.policy = policy
        self.seq = seq
        self._segment_bytes = segment_bytes
        self._segment_size = size  # where the next write goes
        # Bytes of the file that exist (records, then zeros written ahead).
        self._allocated = size
        self._preallocate = policy is not FsyncPolicy.NEVER
        self._zeros_failed = False
        self._fd = os.open(segment_path(directory, seq), os.O_WRONLY)
        self._loop = asyncio.get_running_loop()
        self._on_health_change = on_health_change
        self._buffer: list[bytes] = []
        # Why the log is stalled (see the module docstring), if it is.
        self._write_error: OSError | None = None
        self._sync_error: OSError | None = None
        # A segment could not be sealed or created: stay in this one until retry.
        self._roll_blocked = False
        self._retrying = False
        # Chunks written but not yet covered by a good sync, to write again if
        # a sync fails: (log position after it, segment seq, offset in the
        # file, bytes). Segments, not fds: the sync thread closes sealed
        # segments, and their fd numbers are reused.
        self._unsynced: deque[tuple[int, int, int, bytes]] = deque()
        self._keep_unsynced = policy is not FsyncPolicy.NEVER
        self._flush_scheduled = False
        #: Bytes appended since start (buffered or written); a record's position.
        self.appended = 0
        self._written = 0
        self._synced = 0  # as the loop knows it (the sync thread reports each sync)
        # Shared with the sync thread, under _lock: files written since the
        # last sync began, sealed ones to close after it, whether a file was
        # created, how far the thread is asked to sync, and how far it began.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # The thread's own record of what it synced, for `sync_now` (which
        # cannot wait for the loop's copy: it blocks the loop).
        self._done = threading.Condition(self._lock)
        self._thread_synced = 0
        self._thread_failed = False
        self._dirty: set[int] = set()
        self._to_close: list[tuple[int, int]] = []  # sealed (seq, fd)
        self._new_files = False
        self._requested = 0
        self._started = 0
        self._idle = False
        self._stopping = False
        self._waiters: list[Callable[[], None]] = []
        # Set by a failed sync (with the lock): the thread syncs nothing more
        # until the loop has written the unsynced chunks again (`_resync`).
        self._resync = False
        self._closed = False
        #: Completed fsync rounds (each may cover many replies: group commit).
        self.syncs = 0
        #: How long each sync round took (timed in the sync thread, per round).
        self.sync_times = SyncTimes()
        self._exited = self._loop.create_future()
        self._thread = threading.Thread(target=self._sync_loop, name="tcpmq-fsync", daemon=True)
        self._thread.start()
        self._interval_timer: asyncio.TimerHandle | None = None
        if policy is FsyncPolicy.INTERVAL:
            self._interval_timer = self._loop.call_later(fsync_interval, self._tick, fsync_interval)

    @property
    def durable(self) -> int:
        """Bytes a reply may count on: on disk with `always`, else handed to the
        log, or while a write fails, to the OS (a crash of the process must not
        lose what a reply confirmed)."""
        if self.policy is FsyncPolicy.ALWAYS:
            return self._synced
        if self._write_error is not None:
            return self._written
        return self.appended

    @property
    def stalled(self) -> OSError | None:
        """The failure that keeps the log from writing, or None while it writes."""
        return self._write_error or self._sync_error

    def append(self, record: bytes) -> None:
        if self._closed:
            raise OSError("the log is closed")
        self._buffer.append(record)
        self.appended += len(record)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once `durable` next advances."""
        self._waiters.append(callback)

    def sync_now(self) -> None:
        """Write and sync everything appended so far before returning.

        Blocks the event loop for the sync in progress and one more: for a
        connection that must send replies now because it cannot later.
        """
        if self.policy is not FsyncPolicy.ALWAYS or self._synced >= self.appended:
            return
        self._flush()
        target = self._written
        with self._lock:
            if self._requested < target:
                self._requested = target
                if self._idle:
                    self._wake.notify()
            while self._thread_synced < target and not self._thread_failed:
                if not self._thread.is_alive():
                    return
                self._done.wait(1.0)
            if self._thread_failed:
                return
        if target > self._synced:
            self._synced = target
            self.syncs += 1
            # Others waiting for the disk hear of it on the next loop turn.
            self._loop.call_soon(self._synced_to, target)

    def roll(self) -> int:
        """Seal the current segment now and start the next; returns the new seq.

        Raises:
            OSError: the log is stalled, or the segment could not be sealed or
                created; nothing changed (compaction relies on it).
        """
        self._flush()
        if self.stalled is not None:
            raise OSError(f"the log is stalled: {self.stalled}")
        seq = self.seq
        self._start_segment()
        if self.seq == seq:
            raise OSError("could not start a new log segment")
        return self.seq

    def retry(self) -> None:
        """Try again what a failure stopped: a sync, a write, a segment roll."""
        if self._closed:
            return
        self._roll_blocked = False
        if self._sync_error is not None:
            self._rewrite_unsynced()
        elif self._write_error is not None:
            self._write_error = None
            self._retrying = True
            try:
                self._flush()
            finally:
                self._retrying = False
            if self._write_error is None:
                log.warning("the log writes again")
                self._on_health_change()
                if self.policy is not FsyncPolicy.ALWAYS:
                    self._call_waiters()  # `durable` moved on
        elif self._segment_size >= self._segment_bytes:
            self._flush()
            self._start_segment()
        if not self._preallocate and self.policy is not FsyncPolicy.NEVER and not self.stalled:
            self._preallocate = True  # try the zeros ahead again at the next write

    # -- writing ------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buffer or self._write_error is not None or self._sync_error is not None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        try:
            _write_at(self._fd, memoryview(data), self._segment_size)
        except OSError as exc:
            # Kept, to be written at the same offset by `retry`: nothing is lost.
            self._buffer.insert(0, data)
            self._stall_write(exc)
            return
        self._written += len(data)
        if self._keep_unsynced:
            self._unsynced.append((self._written, self.seq, self._segment_size, data))
        self._segment_size += len(data)
        with self._lock:
            self._dirty.add(self._fd)
        if self._segment_size >= self._segment_bytes and not self._roll_blocked:
            self._start_segment()
        elif self._preallocate and self._allocated - self._segment_size < PREALLOCATE_BYTES // 2:
            self._write_zeros_ahead()
        if self.policy is FsyncPolicy.ALWAYS:
            self._request_sync()

    def _write_zeros_ahead(self) -> None:
        start = max(self._allocated, self._segment_size)
        length = min(PREALLOCATE_BYTES, self._segment_bytes - start)
        if length <= 0:
            return
        # Count the zeros as written even if the write fails part way, so that
        # sealing the segment cuts whatever did land.
        self._allocated = start + length
        try:
            _write_at(self._fd, _ZEROS[:length], start)
        except OSError as exc:
            # Only an optimisation failed (a full disk, a file size limit): the
            # records are intact, and writing them decides whether we go on.
            self._preallocate = False
            # Said once: `retry` tries again every probe while the disk is full.
            level = logging.DEBUG if self._zeros_failed else logging.WARNING
            self._zeros_failed = True
            log.log(level, "writing zeros ahead of the log failed, going on without: %s", exc)

    def _cut_to_records(self) -> None:
        # Drop the zeros written ahead and make that durable, so that only
        # the last segment can end in zeros (recovery relies on it).
        if self._allocated > self._segment_size:
            os.ftruncate(self._fd, self._segment_size)
            os.fsync(self._fd)
        self._allocated = self._segment_size

    def _start_segment(self) -> None:
        try:
            self._cut_to_records()
            fd = create_segment(self.directory, self.seq + 1)
        except OSError as exc:
            # The records are safe where they are: the log goes on in this
            # segment, past its size, until `retry` lets it roll again.
            self._roll_blocked = True
            log.warning(
                "could not start log segment %d, going on in this one: %s", self.seq + 1, exc
            )
            return
        with self._lock:
            self._to_close.append((self.seq, self._fd))
            self._dirty.add(fd)
            self._new_files = True
        self._fd = fd
        self.seq += 1
        self._segment_size = self._allocated = HEADER.size
        if self.policy is FsyncPolicy.NEVER:
            self._close_sealed()

    def _close_sealed(self) -> None:
        with self._lock:
            to_close, self._to_close = self._to_close, []
            self._dirty.difference_update(fd for _, fd in to_close)
        for _, fd in to_close:
            os.close(fd)

    # -- syncing ------------------------------------------------------------

    def _request_sync(self) -> None:
        """Ask the sync thread to sync everything written so far."""
        with self._lock:
            if self._requested < self._written:
                self._requested = self._written
                if self._idle:
                    self._wake.notify()

    def _sync_loop(self) -> None:
        # The sync thread: sync whatever was asked for, as soon as the last
        # sync ends; when stopping, one last round for whatever is dirty.
        try:
            while self._sync_round():
                pass
        finally:
            self._report(self._thread_exited)

    def _sync_round(self) -> bool:
        # Runs in the sync thread; False once it should end.
        with self._lock:
            while (
                not self._resync
                and not self._stopping
                and (self._thread_failed or self._requested == self._started)
            ):
                self._idle = True
                self._wake.wait()
            self._idle = False
            last = self._stopping
            if last and (
                self._thread_failed or (self._requested == self._started and not self._dirty)
            ):
                return False
            resync, self._resync = self._resync, False
            self._thread_failed = False
            target = self._started = self._requested
            fds = list(self._dirty)
            self._dirty.clear()
            to_close, self._to_close = self._to_close, []
            new_files, self._new_files = self._new_files, False
        started = time.perf_counter()
        try:
            self._sync(fds, to_close, new_files)
        except OSError as exc:
            with self._lock:
                # Everything of this round is to be synced again, after the
                # loop has written it again (see `_rewrite_unsynced`).
                self._thread_failed = True
                self._dirty.update(fds)
                self._to_close[:0] = to_close
                self._new_files = self._new_files or new_files
                self._done.notify_all()
            self._report(self._sync_failed, exc)
            return not last
        if fds:
            self.sync_times.record(time.perf_counter() - started)
        with self._lock:
            self._thread_synced = target
            self._done.notify_all()
        self._report(self._synced_to, target, resync)
        return not last

    def _report(self, callback: Callable[..., None], *args: object) -> None:
        # From the sync thread to the loop, unless the loop has already closed.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _sync(self, fds: list[int], to_close: list[tuple[int, int]], new_files: bool) -> None:
        # Runs in the sync thread.
        for fd in fds:
            os.fdatasync(fd)
        if new_files:
            fsync_directory(self.directory)
        for _, fd in to_close:
            os.close(fd)

    # -- failures -------------------------------------------------------------

    def _stall_write(self, exc: OSError) -> None:
        first = self.stalled is None and not self._retrying
        self._write_error = exc
        if first:
            log.error("log write failed, holding new data until it can be written: %s", exc)
            self._on_health_change()

    def _sync_failed(self, exc: OSError) -> None:
        first = self.stalled is None
        self._sync_error = exc
        if first:
            log.error("log sync failed, writing the unsynced data again on retry: %s", exc)
            self._on_health_change()

    def _rewrite_unsynced(self) -> None:
        """Write every chunk since the last good sync again, then have it synced."""
        with self._lock:
            # A sealed segment no longer open was synced before it was closed.
            fds = dict(self._to_close)
        fds[self.seq] = self._fd
        try:
            for _, seq, offset, data in self._unsynced:
                if seq in fds:
                    _write_at(fds[seq], memoryview(data), offset)
        except OSError as exc:
            log.warning("writing the unsynced log data again failed: %s", exc)
            return
        with self._lock:
            self._resync = True
            if self._idle:
                self._wake.notify()

    def _thread_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)

    def _synced_to(self, target: int, resync: bool = False) -> None:
        unsynced = self._unsynced
        while unsynced and unsynced[0][0] <= target:
            unsynced.popleft()
        # Only a sync of the rewritten chunks ends a failed sync's stall (a
        # report from `sync_now` may come after the failure's).
        if resync and self._sync_error is not None:
            # The resync covered everything rewritten: write the rest now.
            self._sync_error = None
            log.warning("the log syncs again")
            self._on_health_change()
            if self._buffer:
                self._flush()
        if target > self._synced:
            self._synced = target
            self.syncs += 1
        elif not self._waiters:
            return
        self._call_waiters()

    def _call_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def _tick(self, interval: float) -> None:
        self._request_sync()
        self._interval_timer = self._loop.call_later(interval, self._tick, interval)

    # -- closing ------------------------------------------------------------

    async def close(self) -> None:
        """Write and sync what is buffered (whatever the policy), then close."""
        if self._closed:
            return
        self._closed = True
        if self._interval_timer is not None:
            self._interval_timer.cancel()
        self._flush()
        with self._lock:
            # The sync thread's last round: everything written, then it ends.
            self._requested = self._written
            self._stopping = True
            self._wake.notify()
        await self._exited
        self._thread.join()
        if self.stalled is not None:
            # Replies covering these bytes were never sent: nothing is lost
            # that anyone was told is kept.
            log.error(
                "closing a stalled log; %d bytes could not be written", sum(map(len, self._buffer))
            )
        else:
            with contextlib.suppress(OSError):
                self._cut_to_records()
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()
        for fd in {*(fd for _, fd in self._to_close), self._fd}:
            os.close(fd)
        self._to_close.clear()


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written
