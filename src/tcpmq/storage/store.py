"""The durable store: the broker's journal on disk, and compaction.

`DiskStore` is the broker's `Journal`: each change becomes one record
appended to the log (see log.py). It is also the log backend's `Commits`: a
ticket is a position in the log, durable once the group commit has passed
it. And it decides when to compact: once the log written since the last
snapshot is as large as that snapshot (and at least `compact_min_bytes`), it
takes a new snapshot and drops the log before it, so disk use stays within
about twice the live data.

A full disk: the store keeps a reserve. A probe reads the free space of the
store's filesystem (one `statvfs`) every `disk_check_interval` seconds and
after every quarter of `min_free_bytes` appended (at least 1 MiB apart),
never per message. While less than `min_free_bytes` is free, or while the
log is stalled by a failed write or sync (see log.py), `full` says why, and
the broker refuses whatever would add data (publishes, new channels, queues
and users) with `storage_full` before changing anything. Acks, nacks, pulls and deletions
still change the state, journaled into the reserve, so consumers keep
draining and an operator can delete. The same probe asks a stalled log to
try again, so the store recovers by itself once space returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..broker import Broker, Channel, Ids, Message, Queue
from ..config import StorageConfig
from .log import FsyncPolicy, LogWriter
from .records import (
    RecordType,
    encode_delivered,
    encode_ids,
    encode_json,
    encode_publish,
    encode_uid,
)
from .recovery import Recovered, list_files, recover
from .snapshot import capture, write_snapshot
from .synctimes import SyncTimes

log = logging.getLogger(__name__)

STORE_DIR = "store"
_MIN_PROBE_BYTES = 1024 * 1024


class DiskStore:
    def __init__(
        self,
        directory: Path,
        broker: Broker,
        writer: LogWriter,
        recovered: Recovered,
        config: StorageConfig,
    ) -> None:
        self.directory = directory
        self.recovered = recovered
        self._broker = broker
        self._writer = writer
        self._compact_min_bytes = config.compact_min_bytes
        self._snapshot_bytes = recovered.snapshot_bytes
        # Log bytes since the newest snapshot began (what compaction would drop).
        self._log_bytes = recovered.log_bytes
        self._compacting: asyncio.Future[None] | None = None
        # A compaction failed: the next probe lets one start again.
        self._compact_blocked = False
        #: Why new data is refused (see the module docstring), or None.
        self.full: str | None = None
        self._min_free_bytes = config.min_free_bytes
        # Probing by bytes too: a burst between two ticks must not eat the
        # reserve. At least 1 MiB apart, never per record.
        self._probe_bytes = max(config.min_free_bytes // 4, _MIN_PROBE_BYTES)
        self._next_probe = 0  # the log position of the next probe by bytes
        self._free: int | None = None
        self._probe_interval = config.disk_check_interval
        self._probe_timer: asyncio.TimerHandle | None = None
        self._snapshot_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tcpmq-snapshot"
        )
        self.snapshots_taken = 0

    # -- Commits: a ticket is a position in the log -----------------------------

    def ticket(self) -> int:
        return self._writer.appended

    def durable(self) -> int:
        return self._writer.durable

    def when_durable(self, callback: Callable[[], None]) -> None:
        self._writer.when_durable(callback)

    def sync_now(self) -> None:
        self._writer.sync_now()

    @property
    def syncs(self) -> int:
        return self._writer.syncs

    @property
    def sync_times(self) -> SyncTimes:
        """How long the log's fsyncs took (see synctimes.py)."""
        return self._writer.sync_times

    @property
    def free_bytes(self) -> int | None:
        """Free space of the store's filesystem at the last probe (None: unreadable)."""
        return self._free

    # -- Journal ----------------------------------------------------------------

    def channel_saved(self, channel: Channel) -> None:
        self._append(encode_json(RecordType.CHANNEL, channel.record()))

    def channel_dropped(self, channel: Channel) -> None:
        self._append(encode_uid(RecordType.CHANNEL_DROP, channel.uid))

    def queue_saved(self, queue: Queue) -> None:
        self._append(encode_json(RecordType.QUEUE, queue.record()))

    def queue_dropped(self, queue: Queue) -> None:
        self._append(encode_uid(RecordType.QUEUE_DROP, queue.uid))

    def published(self, channel: Channel, first_id: int, messages: list[Message]) -> None:
        self._append(encode_publish(channel.uid, first_id, messages))

    def delivered(self, queue: Queue, ids: Ids) -> None:
        self._append(encode_delivered(queue.uid, ids))

    def acked(self, queue: Queue, ids: list[int]) -> None:
        self._append(encode_ids(RecordType.ACK, queue.uid, ids))

    def _append(self, record: bytes) -> None:
        writer = self._writer
        writer.append(record)
        self._log_bytes += len(record)
        if (
            self._compacting is None
            and self._log_bytes >= self._compact_min_bytes
            and self._log_bytes >= self._snapshot_bytes
            and not self._compact_blocked
            and writer.stalled is None
        ):
            self._compacting = asyncio.ensure_future(self.compact())
        if writer.appended >= self._next_probe:
            self._probe()

    # -- the disk's health ----------------------------------------------------------

    def start_probing(self) -> None:
        """Probe now and every `disk_check_interval` seconds until closed."""
        self._tick()

    def _tick(self) -> None:
        self._writer.retry()
        self._compact_blocked = False
        self._probe()
        loop = asyncio.get_running_loop()
        self._probe_timer = loop.call_later(self._probe_interval, self._tick)

    def _probe(self) -> None:
        """Read the free space (one statvfs) and decide whether new data is refused."""
        self._next_probe = self._writer.appended + self._probe_bytes
        try:
            stat = os.statvfs(self.directory)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.directory, exc)
            self._free = None
        else:
            self._free = stat.f_bavail * stat.f_frsize
        self.health_changed()

    def health_changed(self) -> None:
        """Decide anew whether new data is refused (the log calls it when it stalls or recovers)."""
        stalled = self._writer.stalled
        free = self._free
        reason: str | None = None
        if stalled is not None:
            reason = (
                f"the store cannot write ({stalled.strerror or stalled}); "
                "new data is refused until it can"
            )
        elif free is not None and free < self._min_free_bytes:
            reason = (
                f"the store's disk has {free} bytes free, less than min_free_bytes "
                f"({self._min_free_bytes}); new data is refused until there is more"
            )
        if (reason is None) != (self.full is None):
            if reason is None:
                log.warning("the store takes new data again")
            else:
                log.error("the store refuses new data: %s", reason)
        self.full = reason

    # -- compaction ---------------------------------------------------------------

    async def compact(self) -> None:
        """Snapshot the live state and delete the log it covers; runs beside the broker."""
        loop = asyncio.get_running_loop()
        try:
            # Sealing the segment and capturing the state happen in one step of
            # the loop, so the snapshot is exactly the log before the new segment.
            seq = self._writer.roll()
            state = capture(self._broker, seq)
            self._log_bytes = 0
            size = await loop.run_in_executor(
                self._snapshot_executor, write_snapshot, self.directory, state
            )
            await loop.run_in_executor(self._snapshot_executor, self._drop_before, seq)
            self._snapshot_bytes = size
            self.snapshots_taken += 1
            log.info("snapshot %d written (%d bytes); older log removed", seq, size)
        except OSError as exc:
            # The old snapshot and the whole log are still there: nothing lost.
            # The next probe lets a compaction start again.
            self._compact_blocked = True
            log.error("compaction failed: %s", exc)
        finally:
            self._compacting = None

    def _drop_before(self, seq: int) -> None:
        files = list_files(self.directory)
        for old, path in [*files.segments.items(), *files.snapshots.items()]:
            if old < seq:
                path.unlink()

    async def close(self) -> None:
        """Finish a running compaction, then write and sync everything."""
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        if self._compacting is not None:
            await asyncio.wait([self._compacting])
        await self._writer.close()
        self._snapshot_executor.shutdown(wait=True)

    def disk_bytes(self) -> int:
        files = list_files(self.directory)
        paths = [*files.segments.values(), *files.snapshots.values()]
        return sum(path.stat().st_size for path in paths if path.exists())


def open_store(
    data_dir: Path,
    broker: Broker,
    config: StorageConfig,
) -> DiskStore:
    """Recover the broker's state from `data_dir` and journal its changes from now on.

    Raises:
        FormatError: the store is damaged beyond a torn tail.
    """
    directory = data_dir / STORE_DIR
    recovered = recover(directory, broker)
    writer = LogWriter(
        directory,
        seq=recovered.seq,
        size=recovered.size,
        policy=FsyncPolicy(config.fsync),
        fsync_interval=config.fsync_interval,
        segment_bytes=config.segment_bytes,
        on_health_change=lambda: store.health_changed(),
    )
    store = DiskStore(directory, broker, writer, recovered, config)
    broker.journal = store
    store.start_probing()
    return store
