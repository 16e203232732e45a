"""The `tcpmq` command: run the broker, manage it, publish and consume, or open a shell.

One module per job:

| module | job |
|---|---|
| `main.py` | the entry point: wire in `shell`; parse, dispatch, last-resort Ctrl-C, broken pipes |
| `commands.py` | the command table (argparse), shared by the command line and the shell |
| `runner.py` | running a command: event loop, signals, failures to exit codes |
| `exits.py` | the exit codes and the one-line error messages |
| `session.py` | server URL, where credentials come from, the connection |
| `credentials.py` | stored logins in the config directory (0600, written atomically) |
| `prompts.py` | asking for passwords, and yes or no before a deletion |
| `output.py` | tables for people, JSON for scripts |
| `account.py` | `login`, `logout`, `whoami`, `ping` |
| `manage.py` | users, channels, queues, subscriptions, the server's op list |
| `publish.py` | `pub`: valid JSON only, from an argument, a file, or lines streamed |
| `pull.py` | `pull`, `pull --follow`, `ack`, `nack` |
| `observe.py` | `stats`, `top`, `backup` |
| `shell.py` | `tcpmq shell`: cmd + readline over one connection |
| `local.py` | `serve` and `token`, which need no running server |
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
