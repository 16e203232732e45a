"""The durable store: the broker's journal on disk, and compaction.

`DiskStore` is the broker's `Journal`: each change becomes one record
appended to the log (see log.py). It is also the log backend's `Commits`: a
ticket is a position in the log, durable once the group commit has passed
it. And it decides when to compact: once the log written since the last
snapshot is as large as that snapshot (and at least `compact_min_bytes`), it
takes a new snapshot and drops the log before it, so disk use stays within
about twice the live data.
"""

from __future__ import annotations

import asyncio
import logging
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

log = logging.getLogger(__name__)

STORE_DIR = "store"


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
        self._writer.append(record)
        self._log_bytes += len(record)
        if (
            self._compacting is None
            and self._log_bytes >= self._compact_min_bytes
            and self._log_bytes >= self._snapshot_bytes
        ):
            self._compacting = asyncio.ensure_future(self.compact())

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
    on_failure: Callable[[BaseException], None],
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
        on_failure=on_failure,
    )
    store = DiskStore(directory, broker, writer, recovered, config)
    broker.journal = store
    return store
