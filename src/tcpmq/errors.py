"""The error vocabulary of tcpmq.

`ErrorCode` *is* the wire vocabulary: its values are the stable strings that
appear in `{"ok": false, "error": {"code": ...}}` and in `bye` events. Every
exception the broker raises on purpose is a `TcpmqError` carrying one code and
optional structured fields (which field was wrong, the limit and its maximum),
so the session layer turns any of them into one reply without special cases.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    FRAME_TOO_LARGE = "frame_too_large"
    UNAUTHENTICATED = "unauthenticated"
    AUTH_FAILED = "auth_failed"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    LIMIT_EXCEEDED = "limit_exceeded"
    STORAGE_FULL = "storage_full"
    UNAVAILABLE = "unavailable"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class TcpmqError(Exception):
    """Root of every tcpmq error, on the server and in the client library.

    `code` is the stable wire code; `details` are the extra structured fields
    of the error object (for example `field`, `limit`, `max`).
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    @classmethod
    def from_wire(cls, error: dict[str, Any]) -> TcpmqError:
        """Rebuild the exception a peer described in an `error` object.

        Codes this version does not know still raise a `TcpmqError` whose
        `code` is the raw string, so newer servers do not break older clients.
        """
        raw_code = str(error.get("code", ErrorCode.INTERNAL))
        message = str(error.get("message", raw_code))
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        try:
            code = ErrorCode(raw_code)
        except ValueError:
            exc = TcpmqError(message, **details)
            exc.code = raw_code  # type: ignore[assignment]
            return exc
        klass = ERROR_CLASSES.get(code, TcpmqError)
        exc = klass.__new__(klass)
        TcpmqError.__init__(exc, message, code=code, **details)
        return exc

    def to_wire(self) -> dict[str, Any]:
        """The `error` object of a reply or a `bye` event."""
        return {"code": self.code.value, "message": self.message, **self.details}


class BadJson(TcpmqError):
    code = ErrorCode.BAD_JSON


class BadRequest(TcpmqError):
    code = ErrorCode.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        minimum: int | float | None = None,
        maximum: int | float | None = None,
        limit: str | None = None,
    ) -> None:
        # Only the details that apply go on the wire: `field` names the
        # offending field, `min`/`max` the allowed range, `limit` the setting.
        details: dict[str, Any] = {}
        if field is not None:
            details["field"] = field
        if limit is not None:
            details["limit"] = limit
        if minimum is not None:
            details["min"] = minimum
        if maximum is not None:
            details["max"] = maximum
        super().__init__(message, **details)


class UnknownOp(TcpmqError):
    code = ErrorCode.UNKNOWN_OP


class FrameTooLarge(TcpmqError):
    code = ErrorCode.FRAME_TOO_LARGE

    def __init__(self, maximum: int, limit: str = "max_frame_bytes") -> None:
        # `limit` names the setting: max_auth_frame_bytes before authentication.
        super().__init__(f"frame exceeds {maximum} bytes", limit=limit, max=maximum)
        self.maximum = maximum


class Unauthenticated(TcpmqError):
    code = ErrorCode.UNAUTHENTICATED


class AuthFailed(TcpmqError):
    code = ErrorCode.AUTH_FAILED


class Forbidden(TcpmqError):
    code = ErrorCode.FORBIDDEN


class NotFound(TcpmqError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(TcpmqError):
    code = ErrorCode.ALREADY_EXISTS


class LimitExceeded(TcpmqError):
    code = ErrorCode.LIMIT_EXCEEDED

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        maximum: int | float,
        retry_after: float | None = None,
    ) -> None:
        # `retry_after`: seconds until the same request may succeed, for
        # limits that refill with time (the login rate limits).
        if retry_after is None:
            super().__init__(message, limit=limit, max=maximum)
        else:
            super().__init__(message, limit=limit, max=maximum, retry_after=retry_after)


class StorageFull(TcpmqError):
    """The store refuses new data: its disk is (nearly) full, or it cannot write."""

    code = ErrorCode.STORAGE_FULL


class Unavailable(TcpmqError):
    """The shared store cannot be reached or take writes now; the request may be retried."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str = "the store cannot be reached", **details: Any) -> None:
        super().__init__(message, **details)


class ShuttingDown(TcpmqError):
    code = ErrorCode.SHUTTING_DOWN


class InternalError(TcpmqError):
    code = ErrorCode.INTERNAL


ERROR_CLASSES: dict[ErrorCode, type[TcpmqError]] = {
    cls.code: cls
    for cls in (
        BadJson,
        BadRequest,
        UnknownOp,
        FrameTooLarge,
        Unauthenticated,
        AuthFailed,
        Forbidden,
        NotFound,
        AlreadyExists,
        LimitExceeded,
        StorageFull,
        Unavailable,
        ShuttingDown,
        InternalError,
    )
}
