"""The commands that need no running server.

`serve` runs the broker, `token` mints a token offline, `check` and `repair`
inspect and salvage the durable store. All work on the data directory
directly; their failures print `tcpmq: <reason>` and exit 1 (2 when the
data dir is open to other users: see datadir.check_permissions). `serve` and
`repair` hold the data dir's lock (datadir.py) while they write; `check`
only looks whether someone holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import (
    CHANNEL_ACCESS,
    DEFAULT_PORT,
    LOG_FORMATS,
    LOG_LEVELS,
    STORES,
    ConfigError,
    Limits,
    LogConfig,
    ServerConfig,
    StorageConfig,
    default_data_dir,
)
from ..errors import TcpmqError
from ..redisstore.url import is_redis_url, parse_redis_url
from .exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE


def _limit_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Every `serve` flag defaults to None, "not given", so that the config file and
# the environment show through (configfile.py: defaults < file < environment
# < flags); the help shows the setting's default. A flag's dest is its
# setting's name ([server]) or SECTION_NAME (`configfile.Setting.dest`).


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (see protocol.md)")
    for spec in dataclasses.fields(Limits):
        default = spec.default
        group.add_argument(
            _limit_flag(spec.name),
            dest=f"limits_{spec.name}",
            type=type(default),
            metavar="N",
            help=f"default {default}",
        )


def _add_storage_flags(parser: argparse.ArgumentParser) -> None:
    defaults = StorageConfig()
    group = parser.add_argument_group("storage (see README, Durability)")
    group.add_argument(
        "--fsync",
        dest="storage_fsync",
        choices=["always", "interval", "never"],
        help="when writes reach the disk before their reply (default always)",
    )
    group.add_argument(
        "--fsync-interval",
        dest="storage_fsync_interval",
        type=float,
        metavar="SECONDS",
        help=f"with --fsync interval (default {defaults.fsync_interval})",
    )
    group.add_argument(
        "--segment-bytes",
        dest="storage_segment_bytes",
        type=int,
        metavar="N",
        help=f"log segment size (default {defaults.segment_bytes})",
    )
    group.add_argument(
        "--compact-min-bytes",
        dest="storage_compact_min_bytes",
        type=int,
        metavar="N",
        help=f"log size that may start a compaction (default {defaults.compact_min_bytes})",
    )
    group.add_argument(
        "--min-free-bytes",
        dest="storage_min_free_bytes",
        type=int,
        metavar="N",
        help="free disk space below which publishes and creations get storage_full "
        f"(default {defaults.min_free_bytes})",
    )
    group.add_argument(
        "--disk-check-interval",
        dest="storage_disk_check_interval",
        type=float,
        metavar="SECONDS",
        help="how often the free space is read and a failed write retried "
        f"(default {defaults.disk_check_interval})",
    )


def _add_tls_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (see protocol.md, TLS)")
    group.add_argument(
        "--tls-cert",
        dest="tls_cert_file",
        type=Path,
        metavar="FILE",
        help="serve TLS with this PEM certificate chain",
    )
    group.add_argument(
        "--tls-key", dest="tls_key_file", type=Path, metavar="FILE", help="its PEM private key"
    )
    group.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca_file",
        type=Path,
        metavar="FILE",
        help="require client certificates signed by these PEM CAs (mutual TLS)",
    )
    group.add_argument(
        "--plain-listen",
        type=_listen_address,
        metavar="HOST:PORT",
        help="also listen in clear text here, for nc (loopback only without --allow-plaintext)",
    )
    group.add_argument(
        "--allow-plaintext",
        action="store_true",
        default=None,
        help="allow clear text on a non-loopback address (passwords and tokens readable)",
    )


def _add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics (see README, Monitoring)")
    group.add_argument(
        "--metrics-listen",
        type=_listen_address,
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz over HTTP here (default: off)",
    )
    group.add_argument(
        "--metrics-token-file",
        type=Path,
        metavar="FILE",
        help="require the token in FILE for /metrics (bearer or basic auth); "
        "needed for --metrics-listen beyond loopback",
    )


def _listen_address(text: str) -> tuple[str, int]:
    from ..configfile import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_serve(commands: argparse._SubParsersAction[Any]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker until SIGTERM or SIGINT; SIGHUP reloads its settings. "
        "Settings come from the defaults, then --config FILE, then TCPMQ_* variables, "
        "then these flags, each overriding the one before (README, Configuration).",
        epilog="example: tcpmq serve --config /etc/tcpmq/tcpmq.toml --log-level debug",
    )
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read settings from this TOML file ('tcpmq config check FILE' checks one)",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"default {DEFAULT_PORT}")
    serve.add_argument(
        "--store",
        type=_store_setting,
        metavar="{log,memory,redis://HOST:PORT/DB,redis+cluster://HOST:PORT,...}",
        help="log: durable, in the data dir (default); memory: no disk, lost on restart; "
        "a redis:// or redis+cluster:// URL: shared by every node given the same one "
        "(?prefix=P to share a Redis; needs tcpmq[redis])",
    )
    _add_data_dir(serve)
    serve.add_argument(
        "--default-channel-access",
        choices=CHANNEL_ACCESS,
        help="access of a channel created without one: private (its owner, admins and "
        "users granted rights; the default) or public (every user)",
    )
    serve.add_argument(
        "--admin-password-file",
        type=Path,
        metavar="FILE",
        help="the first admin's password is this file's first line "
        "(instead of $TCPMQ_ADMIN_PASSWORD; e.g. a systemd credential)",
    )
    serve.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="the token-signing secret (hex, mode 0600; made if missing) instead of the "
        "data dir's; give every node of a redis store the same one",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, help=f"default {LogConfig().level}")
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines; json: one object per line; journal: <N> priority prefixes for "
        "journald; auto (default): journal when stderr is the journal, else text",
    )
    _add_tls_flags(serve)
    _add_metrics_flags(serve)
    _add_storage_flags(serve)
    _add_limit_flags(serve)
    # Each dest's flag, for messages about a value that came from it.
    flag_names = {a.dest: a.option_strings[0] for a in serve._actions if a.option_strings}
    serve.set_defaults(local=_guarded(_serve), flag_names=flag_names)


def add_token(commands: argparse._SubParsersAction[Any]) -> None:
    token = commands.add_parser(
        "token",
        help="mint a token offline from the data dir",
        description="Mint a token for USER with the data dir's secret; no server needed.",
        epilog="example: tcpmq token alice --ttl 3600 --data-dir /var/lib/tcpmq",
    )
    token.add_argument("user")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default 86400)")
    _add_data_dir(token)
    token.set_defaults(local=_guarded(_token))


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: $TCPMQ_DATA_DIR, else ~/.local/share/tcpmq",
    )


def add_check(commands: argparse._SubParsersAction[Any]) -> None:
    check = commands.add_parser(
        "check",
        help="report damage in the store; change nothing",
        description="Read every store file as a start would and report each damaged region "
        "with its file and offset. Exit 0 when the broker would start, 1 when it would refuse. "
        "With a broker running it checks the store as it is on disk at that moment, and says so.",
        epilog="example: tcpmq check --data-dir /var/lib/tcpmq\n"
        "         tcpmq check /var/backups/tcpmq/2026-11-29",
    )
    check.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        type=Path,
        help="the data dir to check, as --data-dir (a backup, say)",
    )
    _add_data_dir(check)
    check.set_defaults(local=_guarded(_check))


def add_repair(commands: argparse._SubParsersAction[Any]) -> None:
    repair = commands.add_parser(
        "repair",
        help="salvage every intact record of a damaged store",
        description="Rewrite each damaged store file with its intact records; the originals "
        "are moved to store/damaged/. Messages in a damaged region are lost. "
        "Refused while a broker runs on the data dir; no broker can start during a repair.",
        epilog="example: tcpmq repair --data-dir /var/lib/tcpmq && tcpmq check --data-dir ...",
    )
    _add_data_dir(repair)
    repair.set_defaults(local=_guarded(_repair))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (TcpmqError, ValueError, OSError) as exc:
            print(f"tcpmq: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return run


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The settings of `tcpmq serve ARGS`: defaults < --config FILE < TCPMQ_* < flags.

    Raises:
        ConfigError: a bad value, naming where it came from.
    """
    from ..configfile import from_flags, load

    return load(args.config, os.environ, from_flags(vars(args), args.flag_names))


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server and its crypto would slow down every client command.
    from ..datadir import UnsafePermissions
    from ..logsetup import configure
    from ..server import Server
    from ..storage import FormatError, NewerFormat

    try:
        config = server_config(args)
    except ConfigError as exc:
        return _refused(exc)
    configure(config.log)
    # A reload reads the file and the environment again; the flags stay as given.
    server = Server(config, reload_config=lambda: server_config(args))
    try:
        import uvloop
    except ImportError:
        run: Callable[[Any], None] = asyncio.run
    else:
        run = uvloop.run
    try:
        run(server.serve_until_signalled())
    except ConfigError as exc:
        return _refused(exc)
    except UnsafePermissions as exc:
        # Like ssh with a private key others can read: refuse, say the fix.
        print(f"tcpmq: not starting: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NewerFormat as exc:
        # Not damage: a downgrade. Repairing would rewrite what this build cannot read.
        print(
            f"tcpmq: not starting: {exc}; run that newer tcpmq on this data dir, or "
            "start this one on a backup made for it (see README, Backups)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except FormatError as exc:
        # Damage is never skipped silently: say where it is and what to run.
        print(
            f"tcpmq: the store is damaged, not starting: {exc}\n"
            f"tcpmq: run 'tcpmq check --data-dir {config.data_dir}' for a report, "
            "'tcpmq repair' to keep every intact record",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _refused(exc: ConfigError) -> int:
    print(f"tcpmq: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or default_data_dir())


def _store_setting(text: str) -> str:
    if text in STORES:
        return text
    try:
        parse_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}" if is_redis_url(text) else f"log, memory or a redis:// URL, not {text!r}"
        ) from None
    return text


def _store_dir(args: argparse.Namespace) -> Path:
    from ..storage.store import STORE_DIR

    return _data_dir(args) / STORE_DIR


def _check(args: argparse.Namespace) -> int:
    from ..datadir import holder_pid, is_locked
    from ..storage.check import check

    if args.dir is not None:
        if args.data_dir is not None and args.data_dir != args.dir:
            raise ValueError("give the data dir once: DIR or --data-dir")
        args.data_dir = args.dir

    data_dir = _data_dir(args)
    directory = _store_dir(args)
    if is_locked(data_dir):
        # Said first: a live store's tail may be mid-write, which a stopped one's never is.
        pid = holder_pid(data_dir)
        print(
            f"note: a broker (PID {pid if pid is not None else 'unknown'}) is running on "
            f"{data_dir}: this checks the store as it is on disk now; "
            "its last records may still be being written"
        )
    report = check(directory)
    for file in report.files:
        print(f"{file.path.name}  {file.size} bytes  {file.records} records")
        if file.torn_tail is not None:
            offset, reason = file.torn_tail
            print(f"  torn tail at offset {offset} ({reason}): cut off at start, not a problem")
    if report.newer is not None:
        print(
            f"tcpmq: {report.newer}: this build is too old for the store; "
            "check it with that newer tcpmq (do not repair it with this one)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    for problem in report.problems:
        print(f"damaged: {problem}")
    print(f"{report.channels} channels, {report.queues} queues, {report.messages} messages intact")
    if report.ok:
        print(f"{directory}: ok")
        return EXIT_OK
    print(
        f"tcpmq: {len(report.problems)} problem(s) in {directory}; "
        f"'tcpmq repair --data-dir {data_dir}' keeps every intact record",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _repair(args: argparse.Namespace) -> int:
    from ..datadir import DataDirLock

    directory = _store_dir(args)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no store here")
    # Rewriting files under a running broker would lose what it writes; and
    # no broker may start on a half-repaired store.
    lock = DataDirLock(_data_dir(args))
    lock.acquire()
    try:
        return _repair_store(directory)
    finally:
        lock.release()


def _repair_store(directory: Path) -> int:
    from ..storage import NewerFormat
    from ..storage.check import DAMAGED_DIR, check, repair

    try:
        result = repair(directory)
    except NewerFormat as exc:
        print(f"tcpmq: not repairing: {exc}; use that newer tcpmq", file=sys.stderr)
        return EXIT_ERROR
    if not result.repaired and not result.renumbered:
        print(f"{directory}: nothing to repair")
    for path in result.repaired:
        print(f"repaired {path.name}: original kept in {DAMAGED_DIR}/{path.name}")
    for old, new in result.renumbered:
        print(f"renumbered {old.name} -> {new.name}")
    if result.dropped_bytes:
        print(f"{result.dropped_bytes} damaged bytes dropped")
    after = check(directory)
    for problem in after.problems:
        print(f"still damaged: {problem}", file=sys.stderr)
    return EXIT_OK if after.ok else EXIT_ERROR


def _token(args: argparse.Namespace) -> int:
    from ..auth import SECRET_FILE, TokenSigner
    from ..datadir import UnsafePermissions, check_permissions
    from ..users import USERS_FILE, FileUserDirectory

    config = ServerConfig(data_dir=args.data_dir or default_data_dir())
    data_dir = config.data_dir
    # A token is minted with an existing broker's secret for an existing
    # user: creating a secret or a data dir here would only mint tokens that
    # no broker accepts.
    for path in (data_dir, data_dir / SECRET_FILE, data_dir / USERS_FILE):
        if not path.exists():
            raise ValueError(
                f"{path} does not exist: no broker's data dir at {data_dir} "
                "(give --data-dir or $TCPMQ_DATA_DIR; 'tcpmq serve' creates it)"
            )
    try:
        check_permissions(data_dir)
    except UnsafePermissions as exc:
        print(f"tcpmq: not reading the secret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    users = FileUserDirectory(data_dir, config.limits.max_users)
    signer = TokenSigner(users.secret)
    user = users.get(args.user)
    ttl = config.limits.default_token_ttl if args.ttl is None else args.ttl
    if not 1 <= ttl <= config.limits.max_token_ttl:
        raise ValueError(f"--ttl must be between 1 and {config.limits.max_token_ttl}")
    issued = user.token_issued_at(time.time())  # never before a revocation
    print(signer.mint(user.name, user.role, user.uid, ttl, now=issued))
    return EXIT_OK
