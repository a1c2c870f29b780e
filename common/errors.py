"""A short exception hierarchy shared by API and workers; a job's error record is one of these."""

from __future__ import annotations

from typing import Any, ClassVar


class VecqError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class InvalidInput(VecqError):
    status = 422
    code = "invalid"


class Unauthorized(VecqError):
    status = 401
    code = "unauthorized"


class Forbidden(VecqError):
    status = 403
    code = "forbidden"


class NotFound(VecqError):
    status = 404
    code = "not_found"


class Conflict(VecqError):
    status = 409
    code = "conflict"


class TooLarge(VecqError):
    status = 413
    code = "too_large"


class TooManyRequests(VecqError):
    """Too much waiting already at this point: retry shortly (the API answers with Retry-After)."""

    status = 429
    code = "too_many_requests"


class Unavailable(VecqError):
    status = 503
    code = "unavailable"


_BY_CODE: dict[str, type[VecqError]] = {
    cls.code: cls for cls in (InvalidInput, Unauthorized, Forbidden, NotFound, Conflict, TooLarge, TooManyRequests,
                          Unavailable)
}


def from_dict(error: dict[str, Any]) -> VecqError:
    """Rebuild the error a job recorded, so the synchronous path answers with the matching status."""
    cls = _BY_CODE.get(str(error.get("code")), VecqError)
    return cls(str(error.get("message", "")), error.get("field"))
