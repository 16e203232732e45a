"""The `log` backend: the broker core journaled to the data directory's store.

Every change is a record in the append-only log (see storage/); a ticket is
a position in that log and is durable once the group commit has synced past
it. On start the broker is rebuilt from the newest snapshot and the log.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..broker import Broker
from ..config import Limits, StorageConfig
from ..storage import DiskStore, open_store
from .core import CoreBackend


class LogBackend(CoreBackend):
    store: DiskStore


def open_log_backend(
    data_dir: Path,
    limits: Limits,
    storage: StorageConfig,
    loop: asyncio.AbstractEventLoop,
) -> LogBackend:
    """Recover the state kept in `data_dir` and journal every change from now on.

    Raises:
        FormatError: the store is damaged beyond a torn tail.
    """
    broker = Broker(limits)
    store = open_store(data_dir, broker, storage)
    backend = LogBackend("log", broker, store, loop, store.close)
    backend.store = store
    return backend
