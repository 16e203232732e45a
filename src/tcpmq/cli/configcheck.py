"""`tcpmq config check FILE`: validate a config file and print the settings it makes.

What `tcpmq serve --config FILE` would run with, flags aside: the defaults,
the file, then the TCPMQ_* environment variables (configfile.py). The output
is itself a config file, every setting written out, secrets hidden. A bad
value is one line naming the key (or variable) and exit 2; the files the
settings name (TLS, the admin password) are not opened: the broker's user may
be the only one who can read them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .exits import EXIT_OK, EXIT_USAGE


def add_config(commands: argparse._SubParsersAction[Any]) -> None:
    config = commands.add_parser(
        "config",
        help="check a config file for 'tcpmq serve --config'",
        description="Work with tcpmq serve's TOML config file.",
        epilog="example: tcpmq config check /etc/tcpmq/tcpmq.toml",
    )
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate FILE and print the settings in force with it",
        description="Validate FILE and print the settings 'tcpmq serve --config FILE' would "
        "use (defaults < FILE < TCPMQ_* variables), as a config file, secrets hidden. "
        "Exit 0 when valid; a bad value is one line naming it and exit 2.",
        epilog="example: tcpmq config check /etc/tcpmq/tcpmq.toml",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(local=_check)


def _check(args: argparse.Namespace) -> int:
    from ..configfile import as_toml, load

    try:
        config = load(args.file, os.environ)
    except ConfigError as exc:
        print(f"tcpmq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"# {args.file}: ok. The settings in force with it (defaults < file < environment):")
    print(as_toml(config), end="")
    return EXIT_OK
