"""Rate limits on failed authentication, per source address and per user name.

Theory of operation: every source address and every user name has a token
bucket that holds at most `login_failure_burst` tokens and refills at its
rate (`login_failures_per_address`, `login_failures_per_user` per second).
An attempt needs a token in each bucket it is counted in; when one is empty
the attempt is refused at once with `limit_exceeded` and `retry_after` (the
seconds until a token is back), before any work: a refused login hashes
nothing. A password login takes its tokens when it starts, so logins still
being hashed count too, and gives them back when the password was right:
successful logins cost nothing. A token `auth` costs microseconds to check,
so only its failures take a token (from the address's bucket: a token that
fails to verify names no user worth trusting).

Memory: a bucket that has refilled is the same as none, and each table keeps
at most `login_limit_entries` buckets, the least recently used forgotten
first. A bucket untouched for `burst / rate` seconds (4 by default) is full,
so forgetting it loses nothing; only a churn of that many fresh keys within
those seconds could forget a drained one, and every fresh key's first
attempts are bounded by the hash queue (see passwords.py).

Trust: an address from which a user authenticated (password or token)
within `login_trust_seconds` is *trusted*: its logins are hashed before
those of other addresses (see passwords.py). Only a right password or a
valid token makes an address trusted, so a flood of wrong logins from many
addresses cannot keep out the clients that were logging in before it began.
The table of trusted addresses is bounded like the buckets.

Time is passed in (`now`, monotonic seconds), so the tables are tested
without a clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from .config import Limits
from .errors import LimitExceeded


def source_address(host: str) -> str:
    """The key of a peer's address: the address itself, or for IPv6 its /64.

    One IPv6 host commonly holds a whole /64, so counting single addresses
    would let it take a fresh bucket for every attempt. An IPv4 address
    mapped into IPv6 counts as the IPv4 address.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP address (a Unix socket's path): itself
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class TokenBuckets:
    """One token bucket per key, at most `max_keys` of them (least recently used go first)."""

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # A missing key is a full bucket.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket | None:
        """The key's bucket brought up to `now`, or None if it is full (and so forgotten)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        tokens = bucket.tokens + (now - bucket.stamp) * self.rate
        if tokens >= self.burst:
            del self._buckets[key]
            return None
        bucket.tokens = tokens
        bucket.stamp = now
        self._buckets.move_to_end(key)
        return bucket

    def wait(self, key: str, now: float) -> float:
        """Seconds until the key's bucket holds a token: 0 if it holds one now."""
        bucket = self._refilled(key, now)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def take(self, key: str, now: float) -> None:
        """Take a token (the caller checked `wait` first; may go below zero if not)."""
        bucket = self._refilled(key, now)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            self._buckets[key] = _Bucket(self.burst - 1, now)
        else:
            bucket.tokens -= 1

    def give_back(self, key: str, now: float) -> None:
        """Return a token taken by `take` (an attempt that turned out not to count)."""
        bucket = self._refilled(key, now)
        if bucket is not None:
            bucket.tokens += 1
            if bucket.tokens >= self.burst:
                del self._buckets[key]


class LoginLimiter:
    """The failed-authentication buckets of a server: by source address and by user name."""

    def __init__(self, limits: Limits) -> None:
        burst, entries = limits.login_failure_burst, limits.login_limit_entries
        self.by_address = TokenBuckets(limits.login_failures_per_address, burst, entries)
        self.by_user = TokenBuckets(limits.login_failures_per_user, burst, entries)
        self.trust_seconds = limits.login_trust_seconds
        self.max_trusted = entries
        # Trusted addresses: when a user last authenticated from each, oldest first.
        self._trusted: OrderedDict[str, float] = OrderedDict()

    def succeeded(self, address: str, now: float) -> None:
        """A user authenticated from `address`: trust it for `login_trust_seconds`."""
        trusted = self._trusted
        if address in trusted:
            trusted.move_to_end(address)
        elif len(trusted) >= self.max_trusted:
            trusted.popitem(last=False)
        trusted[address] = now

    def trusted(self, address: str, now: float) -> bool:
        """Whether a user authenticated from `address` within `login_trust_seconds`."""
        since = self._trusted.get(address)
        if since is None:
            return False
        if now - since > self.trust_seconds:
            del self._trusted[address]
            return False
        return True

    def check(self, address: str, user: str | None, now: float) -> None:
        """Refuse an attempt from `address` (for `user`, if named) whose bucket is empty.

        Raises:
            LimitExceeded: `limit` names the bucket's setting, `retry_after`
                the seconds until it holds a token again.
        """
        wait = self.by_address.wait(address, now)
        if wait > 0:
            raise _refusal("login_failures_per_address", self.by_address.rate, wait)
        if user is not None:
            wait = self.by_user.wait(user, now)
            if wait > 0:
                raise _refusal("login_failures_per_user", self.by_user.rate, wait)

    def take(self, address: str, user: str | None, now: float) -> None:
        """Count an attempt (a failure, or a login that may yet fail)."""
        self.by_address.take(address, now)
        if user is not None:
            self.by_user.take(user, now)

    def give_back(self, address: str, user: str | None, now: float) -> None:
        """Uncount an attempt taken with `take`: the password was right, or it was never tried."""
        self.by_address.give_back(address, now)
        if user is not None:
            self.by_user.give_back(user, now)


def _refusal(limit: str, rate: float, wait: float) -> LimitExceeded:
    # Rounded up to the millisecond: retrying at retry_after never comes too early.
    retry_after = -(-wait * 1000 // 1) / 1000
    return LimitExceeded(
        f"too many failed authentication attempts; retry in {retry_after:g} s",
        limit=limit,
        maximum=rate,
        retry_after=retry_after,
    )
