"""Asking a person: passwords (on the terminal without echo, or one line of stdin), yes or no.

Passwords never come from the command line, where `ps` and the shell's
history would show them. A yes-or-no question is only asked when stdin is
a terminal: a script gets no prompt, as it never did, and says `--yes`
where it means it.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import warnings

from .exits import CliError, UsageError


def ask_password(prompt: str, *, confirm: bool = False) -> str:
    """Read a password from the terminal without echoing it.

    Raises:
        UsageError: there is no terminal to ask on.
        CliError: the password is empty, or the two entries differ.
    """
    password = _getpass(prompt)
    if not password:
        raise CliError("no password given")
    if confirm and _getpass("Again: ") != password:
        raise CliError("the passwords differ")
    return password


def _getpass(prompt: str) -> str:
    with warnings.catch_warnings():
        # Without a terminal getpass would warn and read stdin with echo on;
        # refuse instead and say what to do.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(prompt)
        except getpass.GetPassWarning:
            raise UsageError(
                "no terminal to ask for a password on; use --password-stdin "
                "(or TCPMQ_PASSWORD for --user)"
            ) from None
        except EOFError:
            print(file=sys.stderr)
            raise CliError("no password given") from None


def password_from_stdin() -> str:
    """The first line of stdin, without its line ending (`--password-stdin`).

    Raises:
        CliError: stdin is empty or its first line is.
    """
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise CliError("no password on stdin")
    return password


def can_ask() -> bool:
    """Whether a person can answer: stdin is a terminal."""
    return sys.stdin.isatty()


async def confirm(question: str) -> bool:
    """Ask `question [y/N]` on stderr and read the answer from the terminal; True for yes.

    The answer is read through the event loop rather than with `input()`:
    a read blocking the loop would hold off the runner's signal handling,
    so Ctrl-C would not end the command until Enter.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    answer: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not answer.done():
            answer.set_result(os.read(fd, 1024))

    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    loop.add_reader(fd, readable)
    try:
        line = await answer
    finally:
        loop.remove_reader(fd)
    if not line:
        print(file=sys.stderr)  # Ctrl-D: end the prompt's line
    return line.strip().lower() in (b"y", b"yes")
