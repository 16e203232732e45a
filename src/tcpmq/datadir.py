"""The data directory's lock: one process writes a data dir at a time.

Two brokers appending to the same log overwrite each other's records, and
acknowledged messages are lost. So whatever writes the store (`tcpmq serve`
with the log store, `tcpmq repair`) holds an exclusive `flock` on
`DATA_DIR/lock` for as long as it runs. The kernel drops the lock when the
process ends, however it ends, so a crash never leaves a stale lock behind;
the file itself stays (deleting it would let two processes lock two different
files of the same name). The holder writes its PID into the file only so that
the refusal can name it.

`is_locked()` lets a reader (`tcpmq check`) learn whether a broker is running
without holding the lock itself.

`check_permissions()` refuses a data dir that other users could tamper with
or read secrets from, as ssh refuses a private key and PostgreSQL a data
directory that others can read: anyone who can write the token secret or
the users file can make themselves admin, and anyone who can read them can
mint tokens or attack the password hashes offline.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from .auth import SECRET_FILE
from .errors import TcpmqError
from .storage.store import STORE_DIR
from .users import USERS_FILE

LOCK_FILE = "lock"


class DataDirInUse(TcpmqError):
    """Another process holds the data dir's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(
            f"data dir {data_dir} is in use by another tcpmq ({holder}); stop it first"
        )
        self.data_dir = data_dir
        self.pid = pid


class UnsafePermissions(TcpmqError):
    """A file of the data dir is open to other users; the message names it and the fix."""

    def __init__(self, path: Path, mode: int, problem: str, fix: str) -> None:
        super().__init__(f"{path} is {problem} (mode {mode:04o}); fix: {fix}")
        self.path = path


# What each part of the data dir must not allow, and the chmod that fixes it.
# The secret and the users file may be group-readable (a backup group), never
# group-writable or readable by others.
_PRIVATE_FILE = (stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH, "600")
_RULES: dict[str, tuple[int, str]] = {
    "": (stat.S_IWOTH, "o-w"),
    SECRET_FILE: _PRIVATE_FILE,
    USERS_FILE: _PRIVATE_FILE,
    STORE_DIR: (stat.S_IWGRP | stat.S_IWOTH, "go-w"),
}
_PROBLEMS = (
    (stat.S_IWOTH, "writable by others"),
    (stat.S_IWGRP, "writable by its group"),
    (stat.S_IROTH, "readable by others"),
)


def check_permissions(data_dir: Path) -> None:
    """Refuse a data dir writable by others, or a secret, users file or store open to them.

    Parts that do not exist yet are skipped: the broker creates them private.

    Raises:
        UnsafePermissions: for the first part at fault.
    """
    for name, (forbidden, fix) in _RULES.items():
        path = data_dir / name if name else data_dir
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & forbidden:
            problem = next(what for bit, what in _PROBLEMS if mode & forbidden & bit)
            raise UnsafePermissions(path, stat.S_IMODE(mode), problem, f"chmod {fix} {path}")


class DataDirLock:
    """The exclusive lock on one data dir, held from `acquire()` to `release()`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting, creating the data dir and the lock file if needed.

        Raises:
            DataDirInUse: another process (or another lock object) holds it.
        """
        if self._fd is not None:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Written only once the lock is ours: the file names the current holder.
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(self.data_dir, holder_pid(self.data_dir)) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file is what releases a flock); idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def holder_pid(data_dir: Path) -> int | None:
    """The PID written in the lock file, or None if there is none to read."""
    try:
        return int((data_dir / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def is_locked(data_dir: Path) -> bool:
    """Whether some process holds the data dir's lock (a running broker, a repair).

    The probe is a shared lock taken without waiting and dropped at once, and
    it never creates the lock file. A broker starting in those microseconds
    would be refused as if the dir were busy, so only readers use it.
    """
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return False
