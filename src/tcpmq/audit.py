"""The audit log: who connected, who authenticated (or failed to), who changed what.

One line per event on the `tcpmq.audit` logger, as `event key=value ...`
(values JSON-quoted when they need it), so journald and a grep both read it.
Passwords and tokens are never passed here. With `--log-format json` every
log line, these included, is one JSON object (see `JsonFormatter`).
"""

from __future__ import annotations

import logging
import time

import orjson

log = logging.getLogger("tcpmq.audit")


def event(name: str, **fields: object) -> None:
    """Log audit event `name` with `fields` (lazily formatted: off the hot path anyway)."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s", name, " ".join(f"{k}={_value(v)}" for k, v in fields.items()))


def _value(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and " " not in text and '"' not in text and "=" not in text:
        return text
    return orjson.dumps(text).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": round(record.created, 6),
            "iso_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()
