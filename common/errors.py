"""vecq's errors: one tree, one code per class, one code -> HTTP status table for the API and the client.

Every error an API answer or a job record carries is `{"code", "message", "field"}`; `code` names one class
below and `STATUS_BY_CODE` gives the HTTP status the API answers with (and the client expects). A job's failure
is recorded as `error.to_dict()` and raised again from it (`from_dict`) where a waiting caller gets its answer.

    VecqError                  internal               500
    ├── InvalidInput           invalid                422
    │   └── InvalidJSON        invalid_json           422
    ├── Unauthorized           unauthorized           401
    ├── Forbidden              forbidden              403
    ├── NotFound               not_found              404
    ├── MethodNotAllowed       method_not_allowed     405
    ├── Conflict               conflict               409
    │   └── Canceled           canceled               409   the job was canceled before it ran
    ├── TooLarge               too_large              413
    ├── UnsupportedMediaType   unsupported_media_type 415
    ├── TooManyRequests        too_many_requests      429   retry after Retry-After
    ├── Unavailable            unavailable            503   retry after Retry-After
    └── JobError                                            a job ran and failed for a reason of its own
        ├── TimedOut           timeout                504   past its time limit
        └── Poisoned           poisoned               500   each delivery lost its worker

This module imports nothing beyond the standard library: the client ships it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypedDict


class ErrorDict(TypedDict):
    code: str
    message: str
    field: str | None


class VecqError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> ErrorDict:
        return {"code": self.code, "message": self.message, "field": self.field}


class InvalidInput(VecqError):
    status = 422
    code = "invalid"


class InvalidJSON(InvalidInput):
    code = "invalid_json"


class Unauthorized(VecqError):
    status = 401
    code = "unauthorized"


class Forbidden(VecqError):
    status = 403
    code = "forbidden"


class NotFound(VecqError):
    status = 404
    code = "not_found"


class MethodNotAllowed(VecqError):
    status = 405
    code = "method_not_allowed"


class Conflict(VecqError):
    status = 409
    code = "conflict"


class Canceled(Conflict):
    code = "canceled"


class TooLarge(VecqError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(VecqError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(VecqError):
    """Too much waiting already at this point: retry shortly (the API answers with Retry-After)."""

    status = 429
    code = "too_many_requests"


class Unavailable(VecqError):
    status = 503
    code = "unavailable"


class JobError(VecqError):
    """A job that ran and failed for a reason of its own (not its input)."""


class TimedOut(JobError):
    status = 504
    code = "timeout"


class Poisoned(JobError):
    code = "poisoned"


def _tree(cls: type[VecqError]) -> list[type[VecqError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _tree(sub))]


CLASS_BY_CODE: dict[str, type[VecqError]] = {cls.code: cls for cls in reversed(_tree(VecqError))
                                             if cls is not JobError}
STATUS_BY_CODE: dict[str, int] = {code: cls.status for code, cls in CLASS_BY_CODE.items()}
RETRYABLE: frozenset[int] = frozenset({TooManyRequests.status, Unavailable.status})


def from_code(code: str, message: str, field: str | None = None) -> VecqError:
    """The error named by `code` (an unknown code from a newer server stays a plain VecqError)."""
    error = CLASS_BY_CODE.get(code, VecqError)(message, field)
    if error.code != code:
        error.code = code  # type: ignore[misc]  # keep a newer server's code visible to the caller
    return error


def from_dict(error: Mapping[str, Any]) -> VecqError:
    """Rebuild the error a job recorded or an API answer carried."""
    return from_code(str(error.get("code", VecqError.code)), str(error.get("message", "")), error.get("field"))
