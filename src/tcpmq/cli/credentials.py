"""Stored logins: one token per server URL in the user's config directory.

`tcpmq login` keeps the token it gets in `credentials.json` under
`$XDG_CONFIG_HOME/tcpmq` (else `~/.config/tcpmq`), keyed by the server's
canonical URL, like `docker login` does. The directory is mode 0700 and the
file 0600 from the moment it exists: it is written to a temporary file
created 0600 in the same directory and renamed over the old one, so a reader
never sees a half-written file and the token is never readable by others,
not even briefly. Concurrent writers take turns on a lock of the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .exits import CliError

FILE_NAME = "credentials.json"
HISTORY_NAME = "history"
_FORMAT = 1


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/tcpmq`, else `~/.config/tcpmq` (XDG: a relative path is ignored)."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "tcpmq"


def ensure_private_dir(directory: Path) -> Path:
    """Create `directory` (and its parents) if needed and make it 0700."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


@dataclass(frozen=True, slots=True)
class StoredLogin:
    user: str
    token: str
    expires_at: float | None = None


class CredentialStore:
    """The credentials file of one config directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else config_dir()

    @property
    def path(self) -> Path:
        return self.directory / FILE_NAME

    def get(self, url: str) -> StoredLogin | None:
        """The login stored for `url` (a canonical URL), or None."""
        entry = self._read().get(url)
        if not isinstance(entry, dict):
            return None
        try:
            return StoredLogin(
                user=str(entry["user"]),
                token=str(entry["token"]),
                expires_at=entry.get("expires_at"),
            )
        except KeyError:
            return None

    def put(self, url: str, login: StoredLogin) -> None:
        """Store `login` for `url`, replacing any earlier one."""
        with self._locked():
            servers = self._read()
            servers[url] = {
                "user": login.user,
                "token": login.token,
                "expires_at": login.expires_at,
            }
            self._write(servers)

    def remove(self, url: str) -> bool:
        """Forget the login for `url`; False if there was none."""
        with self._locked():
            servers = self._read()
            if servers.pop(url, None) is None:
                return False
            self._write(servers)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.directory)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            document = orjson.loads(raw)
            servers = document["servers"]
            if not isinstance(servers, dict):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise CliError(f"{self.path} is damaged; remove it and log in again") from None
        return servers

    def _write(self, servers: dict[str, Any]) -> None:
        document = orjson.dumps(
            {"format": _FORMAT, "servers": servers},
            option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
        )
        # mkstemp creates the file 0600, so the token is never readable by others.
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".credentials-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(document)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
