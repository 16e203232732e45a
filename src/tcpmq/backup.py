"""Online backups: a consistent copy of a running broker's data dir, written beside it.

Theory of operation: the simplest correct copy is the one compaction
already makes. In one step of the event loop the broker's state is
captured (`snapshot.capture`: references to the stored messages, no copies)
together with the users and the token secret; a worker thread then writes,
into DEST, a data dir holding that capture as snapshot 1 followed by an
empty log segment 1, the secret and `users.json` (mode 0600), each fsynced,
then the directories. Nothing of the live store is read or locked, so
compaction and the log go on meanwhile, and the copy holds every change
applied before the capture: every publish and ack whose reply was sent
before the backup began, and maybe some whose reply was not yet sent (as a
crash copy would). A broker started on DEST recovers it as after a clean
stop (messages in flight are ready again), and `tcpmq check DEST` reads it
as any store.

The cost on the loop is the capture, as for a compaction: a list of
references per queue. DEST must be absolute, outside the data dir, and
missing or empty; it is on the broker's machine and written by the
broker's user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .auth import SECRET_FILE, write_private_file
from .backend import Backend, LogBackend
from .errors import AlreadyExists, BadRequest, StorageFull, TcpmqError
from .storage.log import create_segment, fsync_directory, segment_path
from .storage.snapshot import Capture, capture, write_snapshot
from .storage.store import STORE_DIR
from .users import USERS_FILE, UserDirectory, encode_users

#: The backup's store starts over at sequence 1: a snapshot and its first segment.
BACKUP_SEQ = 1


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: str
    channels: int
    queues: int
    bytes: int
    seconds: float

    def fields(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Backups:
    """Starts backups; one DEST is written by one backup at a time."""

    def __init__(self) -> None:
        self._running: set[Path] = set()

    async def run(self, backend: Backend, users: UserDirectory, path: str) -> BackupResult:
        """Write a backup of the broker's state into `path` (see the module docstring).

        Raises:
            BadRequest: the memory or redis store, or `path` not absolute, inside the
                data dir, or not usable as a directory.
            AlreadyExists: `path` holds files, or a backup into it runs.
            StorageFull: the disk of `path` is full.
        """
        if not isinstance(backend, LogBackend):
            if backend.name == "redis":
                raise BadRequest(
                    "the redis store keeps its state in Redis: back up Redis (its RDB or "
                    "AOF files, or BGSAVE), not a node"
                )
            raise BadRequest(
                "the memory store keeps nothing on disk, so there is nothing to back up; "
                "back up a broker running with --store log"
            )
        dest = _destination(path, backend.store.directory.parent)
        if dest in self._running:
            raise AlreadyExists(f"a backup into {dest} is running", field="path")
        _refuse_non_empty(dest)
        started = time.perf_counter()
        # One step of the loop: the state, the users and the secret of one moment.
        state = capture(backend.broker, BACKUP_SEQ)
        users_file = encode_users({user.name: user for user in users.list()})
        secret_file = users.secret.hex().encode() + b"\n"
        self._running.add(dest)
        try:
            size = await asyncio.to_thread(_write, dest, state, users_file, secret_file)
        except OSError as exc:
            raise _failure(dest, exc) from exc
        finally:
            self._running.discard(dest)
        return BackupResult(
            str(dest),
            len(state.channels),
            sum(len(channel.queues) for channel in state.channels),
            size,
            time.perf_counter() - started,
        )


def _destination(path: str, data_dir: Path) -> Path:
    if not os.path.isabs(path):
        raise BadRequest(
            f"path must be absolute (a directory on the broker's machine), not {path!r}",
            field="path",
        )
    dest = Path(os.path.normpath(path))
    data = Path(os.path.realpath(data_dir))
    real = Path(os.path.realpath(dest))
    if real == data or data in real.parents or real in data.parents:
        raise BadRequest(f"path {dest} overlaps the data dir {data_dir}", field="path")
    return dest


def _refuse_non_empty(dest: Path) -> None:
    try:
        with os.scandir(dest) as entries:
            first = next(entries, None)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise AlreadyExists(f"{dest} exists and is not a directory", field="path") from None
    except OSError as exc:
        raise _failure(dest, exc) from exc
    if first is not None:
        raise AlreadyExists(
            f"{dest} is not empty: a backup goes into a new or empty directory", field="path"
        )


def _write(dest: Path, state: Capture, users_file: bytes, secret_file: bytes) -> int:
    """Write the backup's data dir (in a worker thread); returns the bytes written."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    store = dest / STORE_DIR
    store.mkdir(mode=0o700)
    size = write_snapshot(store, state)
    os.close(create_segment(store, BACKUP_SEQ))
    segment = segment_path(store, BACKUP_SEQ)
    fd = os.open(segment, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(store)
    write_private_file(dest / USERS_FILE, users_file)
    write_private_file(dest / SECRET_FILE, secret_file)
    fsync_directory(dest)
    fsync_directory(dest.parent)
    return size + segment.stat().st_size + len(users_file) + len(secret_file)


def _failure(dest: Path, exc: OSError) -> TcpmqError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"the backup into {dest} ran out of space ({reason}); remove it")
    return BadRequest(f"cannot write the backup into {dest}: {reason}", field="path")
