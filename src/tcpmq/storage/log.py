"""The append-only log on disk: segment files, the fsync policy, group commit.

Theory of operation: records are appended to an in-memory buffer while the
event loop handles requests; once per loop iteration the buffer goes to the
current segment file with one `write`. Positions are counted in bytes over
the whole log (`appended`), so "is this reply's record on disk?" is one
comparison with `durable`.

Group commit (policy `always`): one worker thread runs `fdatasync` for all
bytes written so far; whatever is appended while it runs goes into the next
sync, started the moment the previous one ends. However many connections
publish at once, each sync covers all of them, and a reply waits at most
for the sync in progress plus its own. With `interval` the thread syncs
every `fsync_interval` seconds and replies do not wait; with `never` the OS
decides when data reaches the disk.

A segment is sealed once it exceeds `segment_bytes`; the next one starts
with the next sequence number. Sealed segments are deleted when a snapshot
(see snapshot.py) covers them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .records import Kind, header

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".log"


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
    """Create segment `seq` with its header; returns its fd, open for appending."""
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
        self._segment_size = size
        self._fd = os.open(segment_path(directory, seq), os.O_WRONLY | os.O_APPEND)
        self._loop = asyncio.get_running_loop()
        self._on_failure = on_failure
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        #: Bytes appended since start (buffered or written); a record's position.
        self.appended = 0
        self._written = 0
        self._synced = 0
        # Files written since the last sync began, and sealed ones to close after it.
        self._dirty: set[int] = set()
        self._to_close: list[int] = []
        self._new_files = False
        self._syncing = False
        self._waiters: list[Callable[[], None]] = []
        self._failed: BaseException | None = None
        self._closed = False
        #: Completed fsync rounds (each may cover many replies: group commit).
        self.syncs = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tcpmq-fsync")
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
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._fail(exc)
            return
        self._written += len(data)
        self._segment_size += len(data)
        self._dirty.add(self._fd)
        if self._segment_size >= self._segment_bytes:
            self._start_segment()
        if self.policy is FsyncPolicy.ALWAYS:
            self._start_sync()

    def _start_segment(self) -> None:
        try:
            fd = create_segment(self.directory, self.seq + 1)
        except OSError as exc:
            self._fail(exc)
            return
        self._to_close.append(self._fd)
        self._fd = fd
        self.seq += 1
        self._segment_size = os.fstat(fd).st_size
        self._dirty.add(fd)
        self._new_files = True
        if self.policy is FsyncPolicy.NEVER:
            self._close_sealed()

    def _close_sealed(self) -> None:
        for fd in self._to_close:
            self._dirty.discard(fd)
            os.close(fd)
        self._to_close.clear()

    # -- syncing ------------------------------------------------------------

    def _start_sync(self) -> None:
        if self._syncing or self._failed is not None or self._written == self._synced:
            return
        self._syncing = True
        target = self._written
        fds = list(self._dirty)
        to_close = self._to_close
        self._to_close = []
        self._dirty = set()
        new_files, self._new_files = self._new_files, False
        future = self._loop.run_in_executor(self._executor, self._sync, fds, to_close, new_files)
        future.add_done_callback(lambda done: self._synced_to(target, done))

    def _sync(self, fds: list[int], to_close: list[int], new_files: bool) -> None:
        # Runs in the fsync thread.
        for fd in fds:
            os.fdatasync(fd)
        if new_files:
            fsync_directory(self.directory)
        for fd in to_close:
            os.close(fd)

    def _synced_to(self, target: int, done: asyncio.Future[None]) -> None:
        self._syncing = False
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            self._fail(exc)
            return
        self._synced = target
        self.syncs += 1
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()
        if self.policy is FsyncPolicy.ALWAYS:
            self._start_sync()

    def _tick(self, interval: float) -> None:
        self._start_sync()
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
        if self._syncing:
            done = self._loop.create_future()

            def wake() -> None:
                if not done.done():
                    done.set_result(None)

            self._waiters.append(wake)
            await done
        if self._failed is None:
            fds = list(self._dirty)
            try:
                await self._loop.run_in_executor(
                    self._executor, self._sync, fds, [], self._new_files
                )
                self._synced = self._written
            except OSError as exc:
                self._fail(exc)
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()
        for fd in {*self._to_close, self._fd}:
            os.close(fd)
        self._to_close.clear()
        self._executor.shutdown(wait=True)
