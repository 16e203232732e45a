"""The command table: every `tcpmq` command, its options, help and example.

One argparse tree serves both the command line and the shell (`shell=True`
leaves out what makes no sense inside it: the connection options, `serve`,
`shell`, passwords on stdin), so a command behaves the same in both. A leaf
sets `handler` (an async function run against the server, see `runner`) or
`local` (a function that needs no server). The `shell` command's function
comes from the entry point (`main`): the shell is built on this table, so
importing it here would be a cycle. The shell completes a positional or an
option value from the server when its metavar is CHANNEL, QUEUE or USER. The
parser raises `UsageError` instead of exiting, so the shell can go on after
a mistake.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn

from .. import __version__
from . import account, configcheck, local, manage, observe, operate, publish, pull
from .exits import UsageError

#: A command that needs no server: parsed arguments in, exit code out.
LocalCommand = Callable[[argparse.Namespace], int]


class HelpShown(Exception):
    """`--help` or `--version` printed what was asked; nothing else to do."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, and says what was wrong on one line."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # A command (a parser without sub-commands) takes its options anywhere,
        # so `pub orders --raw 42` finds DATA after the option. The intermixed
        # parse calls back into this method; the flag sends that to argparse.
        if self._intermixing or any(
            isinstance(a, argparse._SubParsersAction) for a in self._actions
        ):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    _intermixing = False

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # A mistyped command or choice: offer the closest one, as git does.
        if action.choices is not None and value not in action.choices:
            names = [str(choice) for choice in action.choices]
            close = difflib.get_close_matches(str(value), names, n=1)
            if close:
                name = argparse._get_action_name(action)
                self.error(
                    f"argument {name}: invalid choice: {value!r}; did you mean {close[0]!r}?"
                )
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tcpmq").strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise HelpShown(status)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


class Table:
    """Adds commands to a subparsers action with the shared options."""

    def __init__(self, parent: argparse._SubParsersAction[ArgumentParser], shell: bool) -> None:
        self.parent = parent
        self.shell = shell

    def command(
        self,
        name: str,
        summary: str,
        example: str,
        *,
        description: str | None = None,
        connect: bool = True,
        credentials: bool = True,
        aliases: tuple[str, ...] = (),
    ) -> ArgumentParser:
        parser = self.parent.add_parser(
            name,
            aliases=list(aliases),
            help=summary,
            # The raw formatter keeps the example's lines, so wrap the prose here.
            description=textwrap.fill(description or summary[0].upper() + summary[1:] + ".", 79),
            epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if connect:
            add_common_options(parser, shell=self.shell, credentials=credentials, leaf=True)
        return parser

    def group(self, name: str, summary: str) -> Table:
        description = summary[0].upper() + summary[1:] + "."
        parser = self.parent.add_parser(name, help=summary, description=description)
        sub = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
        return Table(sub, self.shell)


def add_common_options(
    parser: argparse.ArgumentParser, *, shell: bool, credentials: bool = True, leaf: bool
) -> None:
    """--json, and outside the shell the options saying where to connect and as whom.

    On a leaf they default to SUPPRESS, so `tcpmq --json channel list` and
    `tcpmq channel list --json` both work and one does not undo the other.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if leaf else value

    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )
    if shell:
        return
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default(None),
        help="server, [tcpmq://]HOST[:PORT], or tcpmqs://HOST[:PORT] for TLS "
        "(default: $TCPMQ_URL, else tcpmq://127.0.0.1:7878)",
    )
    group.add_argument(
        "--ca",
        default=default(None),
        metavar="FILE",
        help="with tcpmqs://, trust the CAs in this PEM file instead of the system's "
        "(default: $TCPMQ_CA)",
    )
    group.add_argument(
        "--cert",
        default=default(None),
        metavar="FILE",
        help="with tcpmqs://, present this PEM client certificate (default: $TCPMQ_CERT)",
    )
    group.add_argument(
        "--key",
        default=default(None),
        metavar="FILE",
        help="the client certificate's PEM key, if not in --cert (default: $TCPMQ_KEY)",
    )
    if credentials:
        group.add_argument(
            "--token",
            default=default(None),
            help="authenticate with TOKEN (default: $TCPMQ_TOKEN, else the stored login)",
        )
        group.add_argument(
            "-u",
            "--user",
            default=default(None),
            help="log in as USER; the password comes from $TCPMQ_PASSWORD or is asked for",
        )
    group.add_argument(
        "--timeout",
        type=_positive(float),
        default=default(10.0),
        metavar="SECONDS",
        help="give up on a reply after SECONDS (default 10; a pull waits longer)",
    )


def build_parser(*, shell: bool = False, run_shell: LocalCommand | None = None) -> ArgumentParser:
    """The whole command tree; with `shell`, the commands the shell runs.

    `run_shell` runs the command line's `shell` command; without it (as
    inside the shell) there is no such command.
    """
    parser = ArgumentParser(
        prog="tcpmq",
        description="tcpmq message broker: run it, manage it, publish and consume.",
        epilog="Run 'tcpmq COMMAND --help' for a command's options and an example.\n"
        "docs/cli.md describes every command, the exit codes and the stored logins.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tcpmq {__version__}")
    if not shell:
        add_common_options(parser, shell=False, leaf=False)
        parser.set_defaults(
            json=False, url=None, ca=None, cert=None, key=None, token=None, user=None, timeout=10.0
        )
    else:
        parser.set_defaults(json=False)
    table = Table(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), shell)

    if not shell:
        local.add_serve(table.parent)
        local.add_token(table.parent)
        local.add_check(table.parent)
        local.add_repair(table.parent)
        configcheck.add_config(table.parent)
        if run_shell is not None:
            table.command(
                "shell",
                "an interactive session with history and completion",
                "tcpmq shell --url tcpmq://10.0.0.5:7878",
                description="Run commands interactively on one connection: 'channel list', "
                "'pull orders', ... TAB completes commands and channel, queue and user names.",
            ).set_defaults(local=run_shell)

    _account_commands(table, shell)
    _manage_commands(table, shell)
    _message_commands(table)
    _observe_commands(table)
    return parser


def _observe_commands(table: Table) -> None:
    table.command(
        "stats",
        "show rates, connections, every queue and the store (admins)",
        "tcpmq stats\ntcpmq stats --json | jq .rates",
        description="Show the broker's connections, messages published, delivered and "
        "acked per second (over the last few seconds) and since start, its store's disk "
        "use and fsync times, and every channel and queue: ready, in flight, waiting "
        "pulls, the age of the oldest message, lag.",
    ).set_defaults(handler=observe.stats)
    top = table.command(
        "top",
        "show stats again every few seconds, in place (admins)",
        "tcpmq top\ntcpmq top --interval 1 --count 10 > frames.txt",
        description="Print the stats every --interval seconds, over the last frame on a "
        "terminal, until Ctrl-C or --count frames. From the second frame on, each queue "
        "shows its deliveries and acks per second.",
    )
    top.add_argument(
        "--interval",
        type=_positive(float),
        default=2.0,
        metavar="SECONDS",
        help="seconds between frames (default 2)",
    )
    top.add_argument(
        "--count", type=_positive(int), metavar="N", help="stop after N frames (default: never)"
    )
    top.set_defaults(handler=observe.top)
    backup = table.command(
        "backup",
        "have the broker write a consistent copy of its data dir (admins)",
        "tcpmq backup /var/backups/tcpmq/2026-11-29",
        description="Have the broker write, on its own machine, a consistent copy of its "
        "data dir into DEST (absolute; missing or empty) while it serves: every message "
        "and ack confirmed before the backup began, the users and the token secret. "
        "Restore by stopping the broker and starting it on the copy (see the README). "
        "Waits up to an hour for the broker unless --timeout is given.",
    )
    backup.add_argument("dest", metavar="DEST", help="a directory on the broker's machine")
    backup.set_defaults(handler=observe.backup)


def _account_commands(table: Table, shell: bool) -> None:
    login = table.command(
        "login",
        "log in and store the token for this server",
        "tcpmq login --user alice\n"
        "printenv ALICE_PASSWORD | tcpmq login --user alice --password-stdin",
        description="Log in with a password and store the token in the config directory "
        "(mode 0600), so later commands for this server need no credentials.",
        credentials=False,
    )
    login.add_argument("-u", "--user", metavar="USER", default=argparse.SUPPRESS)
    if not shell:
        login.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
    login.add_argument("--ttl", type=_positive(int), metavar="SECONDS", help="token lifetime")
    login.set_defaults(handler=account.login)

    logout = table.command(
        "logout",
        "forget the stored token for this server",
        "tcpmq logout --url tcpmq://10.0.0.5:7878\ntcpmq logout --revoke",
        credentials=False,
    )
    logout.add_argument(
        "--revoke",
        action="store_true",
        help="first make the server refuse every token of your user issued so far",
    )
    logout.set_defaults(handler=account.logout)

    table.command("whoami", "show the user you are on the server", "tcpmq whoami").set_defaults(
        handler=account.whoami
    )
    table.command(
        "ping",
        "check that the server answers; print the round-trip time",
        "tcpmq ping --url tcpmq://10.0.0.5:7878",
        credentials=False,
    ).set_defaults(handler=account.ping)
    table.command(
        "ops", "list the ops the server knows (the protocol's help)", "tcpmq ops"
    ).set_defaults(handler=manage.ops)
    table.command(
        "info", "show the server's version, store and every limit it enforces", "tcpmq info"
    ).set_defaults(handler=manage.info)
    passwd = table.command(
        "passwd",
        "change your password, or as an admin a user's",
        "tcpmq passwd\n"
        "tcpmq passwd alice\n"
        "printenv NEW_PASSWORD | tcpmq passwd ci --password-stdin",
        description="Change the password of USER (default: yours); it is asked for twice "
        "on the terminal. The user's tokens issued so far are refused from then on; a "
        "stored login of yours for this server is renewed with the new password.",
    )
    passwd.add_argument("name", metavar="USER", nargs="?")
    if not shell:
        passwd.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
    passwd.set_defaults(handler=operate.passwd)
    revoke = table.command(
        "revoke-tokens",
        "refuse every token issued so far to you, or as an admin to a user",
        "tcpmq revoke-tokens\ntcpmq revoke-tokens alice",
        description="Make the server refuse every token of USER (default: you) issued "
        "until now, stored logins included; connections already open stay. Log in again "
        "for a new token.",
    )
    revoke.add_argument("name", metavar="USER", nargs="?")
    revoke.set_defaults(handler=operate.revoke_tokens)


def _manage_commands(table: Table, shell: bool) -> None:
    users = table.group("user", "manage users (admins)")
    add = users.command(
        "add",
        "create a user",
        "tcpmq user add alice --role user\n"
        "printenv NEW_PASSWORD | tcpmq user add ci --password-stdin",
        description="Create a user; the password is asked for twice on the terminal.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", choices=["user", "admin"], default="user")
    if not shell:
        add.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
    add.set_defaults(handler=manage.user_add)
    users.command("list", "list users", "tcpmq user list", aliases=("ls",)).set_defaults(
        handler=manage.user_list
    )
    get = users.command("get", "show a user", "tcpmq user get alice")
    get.add_argument("name", metavar="USER")
    get.set_defaults(handler=manage.user_get)
    rm = users.command(
        "rm",
        "delete a user, its queues and its connections",
        "tcpmq user rm alice",
    )
    rm.add_argument("name", metavar="USER")
    _add_yes(rm)
    rm.set_defaults(handler=manage.user_rm)

    channels = table.group("channel", "manage channels and who may use them")
    add = channels.command(
        "add",
        "create a channel",
        "tcpmq channel add orders\ntcpmq channel create news --public",
        description="Create a channel you own. A private channel is open to you, admins "
        "and the users you grant rights ('channel grant'); a public one to every user. "
        "Without --public or --private the server's default applies (private unless its "
        "operator chose otherwise).",
        aliases=("create",),
    )
    add.add_argument("name", metavar="NAME")
    access = add.add_mutually_exclusive_group()
    access.add_argument(
        "--public", dest="access", action="store_const", const="public", help="open to every user"
    )
    access.add_argument(
        "--private",
        dest="access",
        action="store_const",
        const="private",
        help="open to you, admins and users granted rights",
    )
    add.set_defaults(handler=manage.channel_add, access=None)
    channels.command("list", "list channels", "tcpmq channel list", aliases=("ls",)).set_defaults(
        handler=manage.channel_list
    )
    get = channels.command("get", "show a channel and its queues", "tcpmq channel get orders")
    get.add_argument("name", metavar="CHANNEL")
    get.set_defaults(handler=manage.channel_get)
    rm = channels.command(
        "rm", "delete a channel with its queues and messages", "tcpmq channel rm orders"
    )
    rm.add_argument("name", metavar="CHANNEL")
    _add_yes(rm)
    rm.set_defaults(handler=manage.channel_rm)
    for name, summary, example, description, handler in (
        (
            "grant",
            "give a user rights on a private channel",
            "tcpmq channel grant orders alice\ntcpmq channel grant orders bob --publish",
            "Let USER publish to (--publish) or subscribe to (--subscribe) CHANNEL; "
            "neither flag gives both. Allowed to the channel's owner and admins.",
            manage.channel_grant,
        ),
        (
            "revoke",
            "take a user's rights on a channel",
            "tcpmq channel revoke orders alice\ntcpmq channel revoke orders bob --publish",
            "Take --publish, --subscribe or (neither flag) both rights from USER. "
            "Without the subscribe right its queues on CHANNEL are deleted with their "
            "messages. Allowed to the channel's owner and admins.",
            manage.channel_revoke,
        ),
    ):
        rights = channels.command(name, summary, example, description=description)
        rights.add_argument("name", metavar="CHANNEL")
        rights.add_argument("grantee", metavar="USER")
        rights.add_argument("--publish", action="store_true", help="the right to publish")
        rights.add_argument("--subscribe", action="store_true", help="the right to subscribe")
        rights.set_defaults(handler=handler)
    access_command = channels.command(
        "access",
        "make a channel private or public",
        "tcpmq channel access orders private",
        description="Make CHANNEL private (its owner, admins and users granted rights) "
        "or public (every user). Made private, the owners of its queues are granted "
        "the subscribe right, so no subscriber loses its queue. Allowed to the "
        "channel's owner and admins.",
    )
    access_command.add_argument("name", metavar="CHANNEL")
    access_command.add_argument("access", choices=["private", "public"])
    access_command.set_defaults(handler=manage.channel_access)

    sub = table.command(
        "sub",
        "subscribe: add a queue to a channel",
        "tcpmq sub orders --queue billing --ack-timeout 60\n"
        "tcpmq sub orders --overflow drop_oldest --max-messages 10000",
        description="Add a queue to a channel (named after you unless --queue is given); "
        "every message published from then on is also put in it. Subscribing again to "
        "your own queue is not an error and sets the options given.",
    )
    sub.add_argument("channel", metavar="CHANNEL")
    sub.add_argument("--queue", metavar="QUEUE", help="queue name (default: your user name)")
    sub.add_argument(
        "--ack-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="redeliver a message not acked within SECONDS (server default 30)",
    )
    _add_queue_settings(sub)
    sub.set_defaults(handler=manage.subscribe)

    queues = table.group("queue", "list and delete queues")
    ls = queues.command(
        "list",
        "list the queues of a channel, or of every channel",
        "tcpmq queue list orders\ntcpmq queue list",
        aliases=("ls",),
        description="List the queues of CHANNEL; without one, every queue of every channel "
        "with its ready and in-flight messages, redeliveries, the age of its oldest "
        "message and the pulls waiting on it.",
    )
    ls.add_argument("channel", metavar="CHANNEL", nargs="?")
    ls.set_defaults(handler=operate.queue_list)
    rm = queues.command(
        "rm", "delete a queue and its messages (unsubscribe)", "tcpmq queue rm orders billing"
    )
    rm.add_argument("channel", metavar="CHANNEL")
    rm.add_argument("queue", metavar="QUEUE")
    rm.set_defaults(handler=manage.queue_rm)
    purge = queues.command(
        "purge",
        "drop every ready message of a queue",
        "tcpmq queue purge orders billing",
        description="Drop every ready message of a queue; messages in flight stay until "
        "acked, nacked or timed out. Allowed to the queue's owner, the channel's owner "
        "and admins.",
    )
    purge.add_argument("channel", metavar="CHANNEL")
    purge.add_argument("queue", metavar="QUEUE")
    purge.set_defaults(handler=operate.queue_purge)
    update = queues.command(
        "update",
        "change what a full queue does, and its limits",
        "tcpmq queue update orders audit --overflow drop_new --max-messages 1000",
        description="Change a queue's overflow policy and limits; options not given stay "
        "as they are. Allowed to the queue's owner, the channel's owner (who can so cap "
        "another user's queue) and admins; only the channel's owner and admins may set "
        "--overflow reject.",
    )
    update.add_argument("channel", metavar="CHANNEL")
    update.add_argument("queue", metavar="QUEUE")
    _add_queue_settings(update)
    update.set_defaults(handler=manage.queue_update)


def _add_queue_settings(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--overflow",
        choices=["reject", "drop_oldest", "drop_new"],
        help="what the queue does when full: refuse the publish (reject: only the "
        "channel's owner or an admin may set it), drop its oldest messages, or drop the "
        "new ones; a new queue gets reject on your own channel, else drop_oldest",
    )
    parser.add_argument(
        "--max-messages",
        type=_positive(int),
        metavar="N",
        help="the queue holds at most N messages (server default and maximum 1000000)",
    )
    parser.add_argument(
        "--max-bytes",
        type=_positive(int),
        metavar="N",
        help="the queue holds at most N bytes of messages (server default and maximum 256 MiB)",
    )


def _add_yes(parser: ArgumentParser) -> None:
    parser.add_argument(
        "-y", "--yes", action="store_true", help="delete without asking (asked only on a terminal)"
    )


def _message_commands(table: Table) -> None:
    pub = table.command(
        "pub",
        "publish messages to a channel",
        "tcpmq pub orders '{\"order\": 1234}'\n"
        "tcpmq pub greetings --raw 'hello there'\n"
        "tcpmq pub orders --file order.json\n"
        "cat events.jsonl | tcpmq pub audit",
        description="Publish DATA, the JSON document in --file, or with --lines (the "
        "default for stdin) one message per line, sent in pipelined batches (blank lines "
        "skipped). Each must be valid JSON: invalid JSON is an error, never sent as "
        "something else; --raw sends DATA, the file or each line as a JSON string.",
    )
    pub.add_argument("channel", metavar="CHANNEL")
    pub.add_argument("data", metavar="DATA", nargs="?", help="the message (default: stdin)")
    pub.add_argument(
        "--raw", action="store_true", help="send DATA, the file or each line as a JSON string"
    )
    pub.add_argument(
        "--file", metavar="FILE", help="publish FILE ('-': stdin) as one message, or with --lines"
    )
    pub.add_argument(
        "--lines", action="store_true", help="one message per line (of stdin, or of --file)"
    )
    pub.add_argument(
        "--require-queue",
        action="store_true",
        help="fail (exit 1) when a message reached no queue, instead of warning",
    )
    pub.add_argument(
        "--batch",
        type=_positive(int),
        default=publish.DEFAULT_BATCH,
        metavar="N",
        help=f"messages per publish from stdin (default {publish.DEFAULT_BATCH})",
    )
    pub.set_defaults(handler=publish.pub)

    pl = table.command(
        "pull",
        "take messages from a queue, print them, ack them",
        "tcpmq pull orders --queue billing --max 10\n"
        "tcpmq pull orders --queue billing --follow --json | jq .data",
        description="Take up to --max ready messages from a queue, print them, and ack "
        "them once printed. With --follow, keep long-polling and print each message as it "
        "arrives until Ctrl-C; what was printed is acked, what was pulled but not printed "
        "is returned to the queue. See docs/cli.md for the exact guarantee.",
    )
    pl.add_argument("channel", metavar="CHANNEL")
    pl.add_argument("--queue", metavar="QUEUE", help="queue name (default: your user name)")
    pl.add_argument(
        "--max",
        type=_positive(int),
        metavar="N",
        help=f"at most N messages (default 1; with --follow, per pull, default "
        f"{pull.FOLLOW_BATCH})",
    )
    pl.add_argument(
        "--wait",
        type=_not_negative,
        metavar="SECONDS",
        help="long-poll up to SECONDS for a message (default 0; with --follow, per pull, "
        f"default {pull.FOLLOW_WAIT:g})",
    )
    pl.add_argument(
        "--no-ack", action="store_true", help="leave the messages in flight; ack them yourself"
    )
    pl.add_argument("-f", "--follow", action="store_true", help="keep pulling until Ctrl-C")
    pl.set_defaults(handler=pull.pull)

    for name, summary, handler in (
        ("ack", "acknowledge messages pulled with --no-ack", pull.ack),
        ("nack", "return messages pulled with --no-ack to the queue", pull.nack),
    ):
        settle = table.command(name, summary, f"tcpmq {name} orders 17 18 --queue billing")
        settle.add_argument("channel", metavar="CHANNEL")
        settle.add_argument("ids", metavar="ID", nargs="+", type=int)
        settle.add_argument("--queue", metavar="QUEUE", help="queue name (default: your user name)")
        settle.set_defaults(handler=handler)

    peek = table.command(
        "peek",
        "show ready messages of a queue without taking them",
        "tcpmq peek orders --queue billing --max 10",
        description="Print up to --max ready messages of a queue, in the order a pull "
        "would take them, without taking them: nothing is delivered, acked or counted "
        "as an attempt.",
    )
    peek.add_argument("channel", metavar="CHANNEL")
    peek.add_argument("--queue", metavar="QUEUE", help="queue name (default: your user name)")
    peek.add_argument("--max", type=_positive(int), metavar="N", help="at most N (default 1)")
    peek.set_defaults(handler=operate.peek)
