"""`tcpmq`'s entry point: parse the command line and run the command.

It is also where the command table and the shell meet: the shell runs the
table's commands, so the table gets its `shell` command from here rather
than importing the shell itself.
"""

from __future__ import annotations

import sys

from .commands import ArgumentParser, HelpShown, build_parser
from .exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, CliError
from .runner import run_command, silence_stdout
from .shell import run_shell


def build_command_line() -> ArgumentParser:
    """The parser of the `tcpmq` command line, `shell` included."""
    return build_parser(run_shell=run_shell)


def main(argv: list[str] | None = None) -> int:
    """Run `tcpmq` with `argv` (default: the process's arguments); return the exit code."""
    try:
        try:
            args = build_command_line().parse_args(argv)
        except HelpShown as shown:
            return shown.status
        if hasattr(args, "local"):
            code: int = args.local(args)
            return code
        return run_command(args)
    except CliError as exc:
        print(f"tcpmq: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        # Ctrl-C outside a command's own handling (a prompt, startup): no traceback.
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
