"""Asking for passwords: on the terminal without echo, or one line of stdin.

Passwords never come from the command line, where `ps` and the shell's
history would show them.
"""

from __future__ import annotations

import getpass
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
