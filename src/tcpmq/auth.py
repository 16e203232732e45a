"""Secrets, password hashes and tokens.

Passwords are kept only as scrypt hashes (stdlib `hashlib.scrypt`, a memory-hard
KDF, so no extra dependency) with a random salt per password; checks compare
digests in constant time. Tokens are HS256 JWTs signed with the server secret,
a random 256-bit key created on first start in a file only its owner can read.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .errors import AuthFailed

SECRET_FILE = "secret"
_SECRET_BYTES = 32
# scrypt cost: N=2**14, r=8 takes ~16 MiB and tens of milliseconds, the
# interactive-login parameters recommended for scrypt; p=1.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_SALT_BYTES = 16
_ALGORITHM = "HS256"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """Return `scrypt$N$r$p$salt$hash` for storage."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=_SCRYPT_MAXMEM
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a stored hash in constant time; False on any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Verified against when the user does not exist, so that a wrong user name
# costs the same time as a wrong password and does not reveal which users exist.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the owner only (0600), durably."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:  # a short write (a nearly full disk) goes on or raises
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        # A full disk must not keep a half-written file; the old one is intact.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_secret(data_dir: Path, path: Path | None = None) -> bytes:
    """The token-signing key of this data directory (or in `path`), created on first use."""
    path = data_dir / SECRET_FILE if path is None else path
    if not path.exists():
        _create_once(path, secrets.token_bytes(_SECRET_BYTES).hex().encode() + b"\n")
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < _SECRET_BYTES:
        raise ValueError(f"{path}: secret is shorter than {_SECRET_BYTES} bytes")
    return key


def _create_once(path: Path, data: bytes) -> None:
    """Create `path` (0600) holding `data`, unless another process made it first.

    Nodes started together on one secret file must all end up with the same
    secret: the file appears whole (linked from a private temporary file) and
    the first one wins.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    write_private_file(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process's secret, whole: use it
    finally:
        tmp.unlink()


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user: str
    role: str
    uid: str
    expires_at: int
    issued_at: int


class TokenSigner:
    """Mints and verifies the broker's tokens (JWT, HS256, algorithm pinned)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mint(self, user: str, role: str, uid: str, ttl: int, now: float | None = None) -> str:
        """A token issued at `now` (default: the time), truncated to the second.

        Pass `now=User.token_issued_at(...)`: after a revocation that may be up
        to a second ahead of the clock, which `verify` allows.
        """
        issued = int(time.time() if now is None else now)
        claims = {"sub": user, "role": role, "uid": uid, "iat": issued, "exp": issued + ttl}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str, now: float | None = None) -> TokenClaims:
        """Check the signature, then every claim strictly, then expiry at `now` (default: the time).

        pyjwt checks the signature; the claims are checked here rather than
        by its lenient rules (which take `"exp": "123"`, floats and numbers
        beyond 64 bits): each time claim must be an integer epoch second in
        0..`MAX_EPOCH`, each name a string.

        Raises:
            AuthFailed: malformed, forged, expired, not yet valid, or a
                claim missing or of the wrong type (the message says which).
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={
                    "require": ["sub", "uid", "iat", "exp"],
                    # Checked below, strictly; `iat` allowing the second
                    # ahead that a token minted just after a revocation may
                    # have (see users.py), which the caller checks.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_sub": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailed(f"invalid token: no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthFailed("invalid token") from None
        user = _string_claim(claims, "sub")
        uid = _string_claim(claims, "uid")
        role = _string_claim(claims, "role") if "role" in claims else ""
        expires_at = _epoch_claim(claims, "exp")
        issued_at = _epoch_claim(claims, "iat")
        moment = time.time() if now is None else now
        if "nbf" in claims and moment < _epoch_claim(claims, "nbf"):
            raise AuthFailed("token not valid yet (nbf)")
        if expires_at <= moment:
            raise AuthFailed("token expired")
        return TokenClaims(
            user=user, role=role, uid=uid, expires_at=expires_at, issued_at=issued_at
        )


# The last second a time claim may name: 9999-12-31T23:59:59Z. Far past any
# token this server mints, and well inside the 64-bit integers a reply holds.
MAX_EPOCH = 253_402_300_799


def _epoch_claim(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    # bool is an int subclass: `true` is no time.
    if type(value) is not int or not 0 <= value <= MAX_EPOCH:
        raise AuthFailed(
            f"invalid token: claim {name!r} must be an integer epoch second from 0 to {MAX_EPOCH}"
        )
    return value


def _string_claim(claims: dict[str, Any], name: str) -> str:
    value = claims[name]
    if type(value) is not str:
        raise AuthFailed(f"invalid token: claim {name!r} must be a string")
    return value
