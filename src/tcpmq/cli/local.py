"""The commands that need no running server: `serve` runs the broker, `token` mints a token offline.

Both work on the data directory directly; their failures print `tcpmq: <reason>`
and exit 1, as they always have.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import DEFAULT_PORT, Limits, ServerConfig, StorageConfig, default_data_dir
from ..errors import TcpmqError
from .exits import EXIT_ERROR, EXIT_OK


def _limit_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (see protocol.md)")
    for spec in dataclasses.fields(Limits):
        default = spec.default
        group.add_argument(
            _limit_flag(spec.name),
            dest=f"limit_{spec.name}",
            type=type(default),
            default=default,
            metavar="N",
            help=f"default {default}",
        )


def _add_storage_flags(parser: argparse.ArgumentParser) -> None:
    defaults = StorageConfig()
    group = parser.add_argument_group("storage (see README, Durability)")
    group.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default=defaults.fsync,
        help="when writes reach the disk before their reply (default always)",
    )
    group.add_argument(
        "--fsync-interval",
        type=float,
        default=defaults.fsync_interval,
        metavar="SECONDS",
        help=f"with --fsync interval (default {defaults.fsync_interval})",
    )
    group.add_argument(
        "--segment-bytes",
        type=int,
        default=defaults.segment_bytes,
        metavar="N",
        help=f"log segment size (default {defaults.segment_bytes})",
    )
    group.add_argument(
        "--compact-min-bytes",
        type=int,
        default=defaults.compact_min_bytes,
        metavar="N",
        help=f"log size that may start a compaction (default {defaults.compact_min_bytes})",
    )


def add_serve(commands: argparse._SubParsersAction[Any]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker until SIGTERM or SIGINT.",
        epilog="example: TCPMQ_ADMIN_PASSWORD=... tcpmq serve --data-dir /var/lib/tcpmq",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: $TCPMQ_DATA_DIR, else ~/.local/share/tcpmq",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_storage_flags(serve)
    _add_limit_flags(serve)
    serve.set_defaults(local=_guarded(_serve))


def add_token(commands: argparse._SubParsersAction[Any]) -> None:
    token = commands.add_parser(
        "token",
        help="mint a token offline from the data dir",
        description="Mint a token for USER with the data dir's secret; no server needed.",
        epilog="example: tcpmq token alice --ttl 3600 --data-dir /var/lib/tcpmq",
    )
    token.add_argument("user")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default 86400)")
    token.add_argument("--data-dir", type=Path, default=None)
    token.set_defaults(local=_guarded(_token))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (TcpmqError, ValueError, OSError) as exc:
            print(f"tcpmq: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return run


def _config(args: argparse.Namespace) -> ServerConfig:
    values = {f.name: getattr(args, f"limit_{f.name}") for f in dataclasses.fields(Limits)}
    limits = Limits(**values)
    return ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir or default_data_dir(),
        limits=limits,
        storage=StorageConfig(
            fsync=args.fsync,
            fsync_interval=args.fsync_interval,
            segment_bytes=args.segment_bytes,
            compact_min_bytes=args.compact_min_bytes,
        ),
    )


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server and its crypto would slow down every client command.
    from ..server import Server

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    server = Server(_config(args))
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve_until_signalled())
    else:
        uvloop.run(server.serve_until_signalled())
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    from ..server import open_data_dir

    config = ServerConfig(data_dir=args.data_dir or default_data_dir())
    signer, users = open_data_dir(config)
    user = users.get(args.user)
    ttl = config.limits.default_token_ttl if args.ttl is None else args.ttl
    if not 1 <= ttl <= config.limits.max_token_ttl:
        raise ValueError(f"--ttl must be between 1 and {config.limits.max_token_ttl}")
    print(signer.mint(user.name, user.role, user.uid, ttl))
    return EXIT_OK
