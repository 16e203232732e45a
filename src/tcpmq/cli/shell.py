"""`tcpmq shell`: the commands of the command line, typed at a prompt, on one connection.

Each line is split like a shell would (`shlex`) and parsed by the same
argparse table as the command line (`build_parser(shell=True)`), so
`channel add orders` does exactly what `tcpmq channel add orders` does. A
failing command prints its one line and the shell goes on.

The connection lives on one event loop (an `asyncio.Runner`) for the whole
session: each command is one `runner.run()`; while the prompt waits for
input the loop is idle and the connection simply stays open. If it was lost
(a server restart, say) the next command connects again with the same
credentials. TAB completion asks the server for channel, queue and user
names when the word being completed is one (from the command table's
metavars), through the same loop.

SIGINT: at the prompt it drops the line being typed; during a command the
command's own handling applies (see `runner`). The Python handler is set to
a function of ours rather than the default one, because `asyncio.Runner`
installs its own SIGINT handler when it finds the default, and that one
counts interrupts across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cmd
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

from .commands import ArgumentParser, HelpShown, build_parser
from .credentials import HISTORY_NAME, config_dir, ensure_private_dir
from .exits import EXIT_AUTH, EXIT_INTERRUPTED, EXIT_OK, CliError, failure
from .output import Output
from .runner import Context, execute, new_runner
from .session import Session

try:
    import readline
except ImportError:  # pragma: no cover - Python built without readline
    readline = None  # type: ignore[assignment]

_T = TypeVar("_T")
HISTORY_LENGTH = 1000
# Completion must not hang the prompt on a slow or vanished server.
COMPLETION_TIMEOUT = 3.0
_BUILTINS = ("exit", "help", "quit")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings]


class Shell(cmd.Cmd):
    def __init__(self, runner: asyncio.Runner, session: Session, parser: ArgumentParser) -> None:
        super().__init__()
        self.runner = runner
        self.session = session
        self.parser = parser
        self.interactive = sys.stdin.isatty()
        self.history = config_dir() / HISTORY_NAME
        self._matches: list[str] = []
        #: The exit code of the last command, which is the shell's own at the end (as in sh).
        self.status = EXIT_OK

    # -- the prompt and the loop --------------------------------------------

    def refresh_prompt(self) -> None:
        """`user@host:port> `; no prompt when reading commands from a pipe or file."""
        if not self.interactive:
            self.prompt = ""
            return
        identity = self.session.identity
        user = f"{identity.user}@" if identity is not None else ""
        self.prompt = f"{user}{self.session.host_port}> "

    def postcmd(self, stop: bool, line: str) -> bool:
        self.refresh_prompt()  # after 'login', or a lost connection
        return stop

    def cmdloop(self, intro: Any = None) -> None:
        self.load_history()
        try:
            while True:
                try:
                    super().cmdloop(intro)
                    return
                except KeyboardInterrupt:
                    # Ctrl-C at the prompt drops the line, as in bash.
                    print("^C")
                    intro = ""
        finally:
            self.save_history()

    def preloop(self) -> None:
        self.refresh_prompt()
        if readline is not None and self.interactive:
            readline.set_completer_delims(" \t\n")  # names contain '-' and '.'
            if "libedit" in (readline.__doc__ or ""):
                readline.parse_and_bind("bind ^I rl_complete")

    def load_history(self) -> None:
        if readline is None or not self.interactive:
            return
        readline.set_history_length(HISTORY_LENGTH)
        with contextlib.suppress(OSError):
            readline.read_history_file(self.history)

    def save_history(self) -> None:
        if readline is None or not self.interactive:
            return
        try:
            ensure_private_dir(self.history.parent)
            # Created 0600 before readline writes into it: commands can name users and queues.
            os.close(os.open(self.history, os.O_WRONLY | os.O_CREAT, 0o600))
            readline.write_history_file(self.history)
            os.chmod(self.history, 0o600)
        except OSError as exc:
            print(f"tcpmq: cannot save the history: {exc}", file=sys.stderr)

    def emptyline(self) -> bool:
        return False  # cmd.Cmd would repeat the last command

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the session's loop."""
        signal.signal(signal.SIGINT, _interrupt)
        try:
            return self.runner.run(coroutine)
        finally:
            signal.signal(signal.SIGINT, _interrupt)

    # -- commands -----------------------------------------------------------

    def onecmd(self, line: str) -> bool:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            print(f"tcpmq: {exc}", file=sys.stderr)
            return False
        if not words:
            return False
        if words[0] in ("exit", "quit", "EOF"):
            if words[0] == "EOF" and self.interactive:
                print()  # end the prompt's line, as after any input
            return True
        if words[0] in ("help", "?"):
            self.help(words[1:])
            self.status = EXIT_OK
            return False
        try:
            args = self.parser.parse_args(words)
        except HelpShown as shown:
            self.status = shown.status
            return False
        except CliError as exc:
            print(f"tcpmq: {exc.message}", file=sys.stderr)
            self.status = exc.code
            return False
        ctx = Context(self.session, Output(json=args.json), interactive=True)
        try:
            self.run(self.session.revive())
            self.status = self.run(execute(ctx, args))
        except KeyboardInterrupt:
            print(file=sys.stderr)
            self.status = EXIT_INTERRUPTED
        return False

    def help(self, topic: list[str]) -> None:
        if topic:
            with contextlib.suppress(HelpShown, CliError):
                self.parser.parse_args([*topic, "--help"])
            return
        commands = _subcommands(self.parser)
        assert commands is not None
        lines = [(a.dest, a.help or "") for a in commands._choices_actions]
        lines += [("help [COMMAND]", "this list, or a command's options"), ("exit", "end")]
        width = max(len(name) for name, _ in lines)
        print("\n".join(f"  {name:<{width}}  {text}" for name, text in lines))

    # -- completion ---------------------------------------------------------

    def complete(self, text: str, state: int) -> str | None:  # type: ignore[override]
        if state == 0:
            assert readline is not None
            before = readline.get_line_buffer()[: readline.get_begidx()]
            try:
                # Python's readline appends nothing to a unique match; a space
                # moves on to the next word, as in bash.
                self._matches = [m + " " for m in self.completions(shlex.split(before), text)]
            except ValueError:  # an unclosed quote
                self._matches = []
            except Exception:
                # An exception escaping into readline would be lost anyway.
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    def completions(self, words: list[str], text: str) -> list[str]:
        """What may follow `words` and starts with `text`."""
        top = not words
        if words and words[0] in ("help", "?"):
            words = words[1:]
        parser: argparse.ArgumentParser = self.parser
        positionals: list[str] = []
        expecting: argparse.Action | None = None
        for word in words:
            if expecting is not None:
                expecting = None
                continue
            commands = _subcommands(parser)
            if commands is not None and word in commands.choices:
                parser = commands.choices[word]
            elif word.startswith("-"):
                action = parser._option_string_actions.get(word)
                if action is not None and action.nargs != 0:
                    expecting = action
            else:
                positionals.append(word)
        if expecting is not None:
            return self._values(expecting, text, parser, positionals)
        commands = _subcommands(parser)
        if commands is not None:
            names = [*commands.choices, *(_BUILTINS if top else ())]
            return sorted(name for name in names if name.startswith(text))
        if text.startswith("-"):
            options = parser._option_string_actions
            return sorted(o for o in options if o.startswith("--") and o.startswith(text))
        actions = _positionals(parser)
        if len(positionals) < len(actions):
            return self._values(actions[len(positionals)], text, parser, positionals)
        if actions and actions[-1].nargs in ("+", "*"):
            return self._values(actions[-1], text, parser, positionals)
        return []

    def _values(
        self,
        action: argparse.Action,
        text: str,
        parser: argparse.ArgumentParser,
        positionals: list[str],
    ) -> list[str]:
        if action.choices is not None:
            return sorted(str(c) for c in action.choices if str(c).startswith(text))
        kind = action.metavar
        channel = None
        if kind == "QUEUE":
            # The queue's channel is the CHANNEL positional typed before it.
            actions = _positionals(parser)
            index = next((i for i, a in enumerate(actions) if a.metavar == "CHANNEL"), None)
            if index is None or index >= len(positionals):
                return []
            channel = positionals[index]
        if kind not in ("CHANNEL", "QUEUE", "USER"):
            return []
        names = self.run(self._names(str(kind), channel))
        return sorted(name for name in names if name.startswith(text))

    async def _names(self, kind: str, channel: str | None) -> list[str]:
        if self.session.identity is None:
            return []  # completing must never ask for a password
        try:
            async with asyncio.timeout(COMPLETION_TIMEOUT):
                client = await self.session.client()
                if kind == "CHANNEL":
                    return [c.name for c in await client.channel_list()]
                if kind == "QUEUE" and channel is not None:
                    return [q.name for q in await client.queue_list(channel)]
                if kind == "USER":
                    return [u.name for u in await client.user_list()]
        except Exception:
            pass  # no names to offer (not found, forbidden, gone): complete nothing
        return []


async def _open(session: Session) -> int:
    """Connect, and authenticate if credentials are at hand; 0, or the exit code."""
    try:
        await session.client()
    except CliError as exc:
        if exc.code != EXIT_AUTH:
            return failure(exc, session.url)
        # The shell is useful unauthenticated too: 'login' works there.
        print(f"tcpmq: {exc.message}", file=sys.stderr)
        try:
            await session.client(authenticate=False)
        except Exception as second:
            return failure(second, session.url)
    except Exception as exc:
        return failure(exc, session.url)
    return EXIT_OK


def run_shell(args: argparse.Namespace) -> int:
    """Run the shell until `exit`, `quit` or EOF; returns the last command's exit code."""
    session = Session.from_args(args)
    with new_runner() as runner:
        shell = Shell(runner, session, build_parser(shell=True))
        code = shell.run(_open(session))
        if code != EXIT_OK:
            return code
        intro = None
        if shell.interactive:
            intro = (
                f"tcpmq shell on {session.url}: 'help' lists the commands, "
                "TAB completes, 'exit' or Ctrl-D ends."
            )
        try:
            shell.cmdloop(intro)
        finally:
            with contextlib.suppress(Exception):
                shell.run(session.close())
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return shell.status
