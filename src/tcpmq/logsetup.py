"""The server's log on stderr: its format and level (`[log]`, `--log-format`, `--log-level`).

Every format writes one line per event, so journald and a grep see one entry
each: "journal" puts the syslog priority in front as `<N>` (journald reads it
with `SyslogLevelPrefix=`, its default, and adds the time itself) and folds
a traceback into the same line. "auto" picks journal when stderr is the
journal: systemd names the stream in $JOURNAL_STREAM as `DEVICE:INODE`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from .audit import JsonFormatter
from .config import LogConfig

#: Python's levels as syslog priorities (sd-daemon.h's SD_ERR, SD_WARNING, ...).
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, one line whatever the message or its exception holds."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        priority = PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>" + " | ".join(text.splitlines())


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether stderr is the stream systemd connected to the journal."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


def configure(config: LogConfig) -> str:
    """Send the log to stderr as `config` says; returns the format used ("auto" resolved)."""
    form = config.format
    if form == "auto":
        form = "journal" if stderr_is_journal() else "text"
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    elif form == "journal":
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.level.upper(), handlers=[handler], force=True)
    return form


def set_level(level: str) -> None:
    """Log from `level` up from now on (a reload)."""
    logging.getLogger().setLevel(level.upper())
