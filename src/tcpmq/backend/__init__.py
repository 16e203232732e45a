"""Backends: where the broker's state lives (see base.py for the interface).

`log` (the default) journals every change to the data directory and survives
restarts and crashes; `memory` keeps everything in the process.
"""

from .base import Backend, Commits
from .core import CoreBackend
from .log import LogBackend, open_log_backend
from .memory import open_memory_backend

__all__ = [
    "Backend",
    "Commits",
    "CoreBackend",
    "LogBackend",
    "open_log_backend",
    "open_memory_backend",
]
