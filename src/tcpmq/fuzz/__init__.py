"""A protocol fuzzer for tcpmq: hostile and broken request lines against a real server.

Not part of the server (which never imports it): the test suite runs a
bounded slice of it (tests/test_fuzz.py), and `python -m tcpmq.fuzz` runs it
for long against a `tcpmq serve` process of its own, sampling the server's
memory. One module per job:

| module | job |
|---|---|
| `frames.py` | making fuzz lines; `split_lines`, the framing oracle |
| `session.py` | one connection: batches over a socket, every reply checked |
| `runner.py` | a run: the fuzz user, several sessions at once, a budget |
| `__main__.py` | the command line: a server process, its memory, the report |
"""

from __future__ import annotations

from .frames import FrameMaker, Framing, split_lines
from .runner import Budget, fuzz
from .session import ContractBroken, FuzzSession, Tally, check_replies

__all__ = [
    "Budget",
    "ContractBroken",
    "FrameMaker",
    "Framing",
    "FuzzSession",
    "Tally",
    "check_replies",
    "fuzz",
    "split_lines",
]
