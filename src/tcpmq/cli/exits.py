"""Exit codes, and the one line on stderr that explains a failure.

Every command ends through `failure()`: an exception becomes an exit code
from the documented table and one line `tcpmq: <what>: <why>`, never a
traceback. Scripts branch on the code; people read the line.
"""

from __future__ import annotations

import ssl
import sys

from ..client import ConnectionClosed
from ..errors import ErrorCode, TcpmqError
from ..tls import describe_ssl_error

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_FORBIDDEN = 6
# What a shell reports for a process ended by SIGINT or SIGPIPE (128 + signal).
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

_BY_CODE = {
    ErrorCode.UNAUTHENTICATED: EXIT_AUTH,
    ErrorCode.AUTH_FAILED: EXIT_AUTH,
    ErrorCode.FORBIDDEN: EXIT_FORBIDDEN,
    ErrorCode.NOT_FOUND: EXIT_NOT_FOUND,
}


class CliError(Exception):
    """A failure the command line detected itself, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(CliError):
    """The command was called wrongly: a bad option value, a missing argument."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def describe(exc: BaseException, url: str) -> tuple[int, str]:
    """The exit code and the message for `exc`, raised while talking to `url`."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    if isinstance(exc, ConnectionClosed):
        # The server ending the connection because the user was deleted is
        # about who you are, not about the network.
        code = EXIT_AUTH if exc.code == ErrorCode.AUTH_FAILED else EXIT_CONNECTION
        return code, f"connection to {url} closed: {exc.message}"
    if isinstance(exc, TcpmqError):
        return _BY_CODE.get(exc.code, EXIT_ERROR), f"{exc.code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return EXIT_CONNECTION, f"no reply from {url} in time"
    if isinstance(exc, ssl.SSLError):
        return EXIT_CONNECTION, f"TLS with {url} failed: {describe_ssl_error(exc)}"
    if isinstance(exc, OSError):
        # Failing to connect is reported by the session; this is a local file.
        where = f": {exc.filename}" if exc.filename else ""
        return EXIT_ERROR, f"{exc.strerror or exc}{where}"
    if isinstance(exc, ValueError):
        return EXIT_USAGE, str(exc)
    raise exc


def failure(exc: BaseException, url: str) -> int:
    """Print the one line for `exc` on stderr and return its exit code.

    Exceptions that are not failures of a command (bugs) are re-raised.
    """
    code, message = describe(exc, url)
    print(f"tcpmq: {message}", file=sys.stderr, flush=True)
    return code
