"""Durable storage of the broker's state: an append-only log with snapshots."""

from .log import FsyncPolicy
from .records import FormatError, NewerFormat
from .store import DiskStore, open_store

__all__ = ["DiskStore", "FormatError", "FsyncPolicy", "NewerFormat", "open_store"]
