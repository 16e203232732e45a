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
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .records import HEADER, Kind, header

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
    """Create segment `seq` with its header; returns its fd, open for writing."""
    fd = os.open(segment_path(directory, seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, header(Kind.LOG, seq))
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
        on_failure: Callable[[BaseException], None],
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
        self._fd = os.open(segment_path(directory, seq), os.O_WRONLY)
        self._loop = asyncio.get_running_loop()
        self._on_failure = on_failure
        self._buffer: list[bytes] = []
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
        self._to_close: list[int] = []
        self._new_files = False
        self._requested = 0
        self._started = 0
        self._idle = False
        self._stopping = False
        self._waiters: list[Callable[[], None]] = []
        self._failed: BaseException | None = None
        self._closed = False
        #: Completed fsync rounds (each may cover many replies: group commit).
        self.syncs = 0
        self._exited = self._loop.create_future()
        self._thread = threading.Thread(target=self._sync_loop, name="tcpmq-fsync", daemon=True)
        self._thread.start()
        self._interval_timer: asyncio.TimerHandle | None = None
        if policy is FsyncPolicy.INTERVAL:
            self._interval_timer = self._loop.call_later(fsync_interval, self._tick, fsync_interval)

    @property
    def durable(self) -> int:
        """Bytes a reply may count on: on disk with `always`, else handed to the log."""
        if self.policy is FsyncPolicy.ALWAYS:
            return self._synced
        return self.appended

    def append(self, record: bytes) -> None:
        if self._failed is not None or self._closed:
            raise OSError("the log is not writable")
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
                if self._failed is not None or not self._thread.is_alive():
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
        """Seal the current segment now and start the next; returns the new seq."""
        self._flush()
        self._start_segment()
        return self.seq

    # -- writing ------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buffer or self._failed is not None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        try:
            _write_at(self._fd, memoryview(data), self._segment_size)
        except OSError as exc:
            self._fail(exc)
            return
        self._written += len(data)
        self._segment_size += len(data)
        with self._lock:
            self._dirty.add(self._fd)
        if self._segment_size >= self._segment_bytes:
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
            log.warning("writing zeros ahead of the log failed, going on without: %s", exc)

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
            self._fail(exc)
            return
        with self._lock:
            self._to_close.append(self._fd)
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
            self._dirty.difference_update(to_close)
        for fd in to_close:
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
            while self._requested == self._started and not self._stopping:
                self._idle = True
                self._wake.wait()
            self._idle = False
            last = self._stopping
            if last and self._requested == self._started and not self._dirty:
                return False
            target = self._started = self._requested
            fds = list(self._dirty)
            self._dirty.clear()
            to_close, self._to_close = self._to_close, []
            new_files, self._new_files = self._new_files, False
        try:
            self._sync(fds, to_close, new_files)
        except OSError as exc:
            with self._lock:
                self._thread_failed = True
                self._done.notify_all()
            self._report(self._fail, exc)
            return False
        with self._lock:
            self._thread_synced = target
            self._done.notify_all()
        self._report(self._synced_to, target)
        return not last

    def _report(self, callback: Callable[..., None], *args: object) -> None:
        # From the sync thread to the loop, unless the loop has already closed.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _sync(self, fds: list[int], to_close: list[int], new_files: bool) -> None:
        # Runs in the sync thread.
        for fd in fds:
            os.fdatasync(fd)
        if new_files:
            fsync_directory(self.directory)
        for fd in to_close:
            os.close(fd)

    def _thread_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)

    def _synced_to(self, target: int) -> None:
        if self._failed is not None:
            return
        if target > self._synced:
            self._synced = target
            self.syncs += 1
        elif not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def _tick(self, interval: float) -> None:
        self._request_sync()
        self._interval_timer = self._loop.call_later(interval, self._tick, interval)

    def _fail(self, exc: BaseException) -> None:
        # After a failed write or fsync nothing more can be promised (the
        # kernel may have dropped the dirty pages): stop taking writes.
        if self._failed is None:
            self._failed = exc
            log.critical("log write failed: %s", exc)
            self._on_failure(exc)
            waiters, self._waiters = self._waiters, []
            for callback in waiters:
                callback()

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
        if self._failed is None:
            with contextlib.suppress(OSError):
                self._cut_to_records()
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()
        for fd in {*self._to_close, self._fd}:
            os.close(fd)
        self._to_close.clear()


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written
