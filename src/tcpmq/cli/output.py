"""Printing results: aligned tables for people, JSON documents for scripts.

With `--json` every command prints one JSON document on one line (`pull`:
one line per message), the shape documented in docs/cli.md; otherwise it
prints tables and short sentences. Times are shown in local time to the
second. Writes go straight to stdout and are flushed, so a `BrokenPipeError`
surfaces where the write happened and `pull` knows what was printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson
from pydantic import BaseModel

from ..models import ChannelInfo


def when(epoch: float) -> str:
    """`epoch` as local `YYYY-MM-DD HH:MM:SS`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def seconds(value: float) -> str:
    """A duration without trailing zeros: `30s`, `0.5s`."""
    return f"{value:g}s"


def compact(value: Any) -> str:
    """A JSON value on one line (message data as people see it)."""
    return orjson.dumps(value).decode()


def plain(value: Any) -> Any:
    """Models (and lists of them) as JSON-ready dicts, as the protocol shows them."""
    if isinstance(value, ChannelInfo) and value.queues is None:
        # Only channel.get has `grants` and `queues`; a null would read as "none".
        return value.model_dump(mode="json", exclude={"grants", "queues"})
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns aligned on two spaces, headers first; no trailing blanks."""
    rows = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """`key: value` lines with the values aligned."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in pairs)


class Output:
    """Where a command's results go, and in which form."""

    def __init__(self, json: bool, stream: TextIO | None = None) -> None:
        self.json = json
        self.stream = stream if stream is not None else sys.stdout

    def text(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def document(self, value: Any) -> None:
        """One JSON document on one line."""
        self.text(orjson.dumps(plain(value)).decode())

    def result(self, value: Any, text: str) -> None:
        """`value` as JSON with `--json`, else `text`."""
        if self.json:
            self.document(value)
        else:
            self.text(text)
