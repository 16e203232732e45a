"""What `server.info` answers: the server's identity, its store and every limit.

A client written from protocol.md knows the limits' names and defaults; this
tells it the values this server runs with, so it can stay inside them rather
than learn each one from an error. The answer is built from the settings and
the protocol's fixed limits alone, so it is a pure function, tested without a
server.
"""

from __future__ import annotations

from dataclasses import fields

from . import PROTOCOL_VERSION, __version__, wire
from .config import Limits

#: The limits the protocol fixes (no setting changes them), by their names in
#: protocol.md. Every one of them is also in `server.info`'s `limits`.
FIXED_LIMITS: dict[str, int] = {
    "max_depth": wire.MAX_DEPTH,
    "max_id_chars": wire.MAX_ID_CHARS,
    "max_token_chars": wire.MAX_TOKEN_CHARS,
    "min_password_chars": wire.MIN_PASSWORD_CHARS,
    "max_password_chars": wire.MAX_PASSWORD_CHARS,
}


def server_info(
    limits: Limits, store: str, default_channel_access: str = "private"
) -> dict[str, object]:
    """The result of `server.info`.

    Returns:
        `server`, `version`, `protocol`, `store` (the backend's name, "log" or
        "memory"), `default_channel_access` (what `channel.create` without
        `access` makes) and `limits`: every field of `limits` by name, then
        the fixed limits of `FIXED_LIMITS`.
    """
    settings: dict[str, object] = {spec.name: getattr(limits, spec.name) for spec in fields(limits)}
    return {
        "server": "tcpmq",
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "store": store,
        "default_channel_access": default_channel_access,
        "limits": settings | FIXED_LIMITS,
    }
