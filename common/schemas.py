"""Request and response bodies of the HTTP API (API.md). Shape and types here; limits that depend on
settings or on the collection (dim, k max, id length) are checked by common/codec.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.codec import index_description_problem

# strict: no "1.5" strings or true/false in vectors; allow_inf_nan=False: no NaN/Infinity, no 1e309.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Vector = Annotated[list[Number], Field(min_length=1)]
StrictBool = Annotated[bool, Field(strict=True)]
VectorId = Annotated[str, Field(min_length=1)]
Lsn = Annotated[str, Field(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectionCreate(Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
    dim: Annotated[int, Field(strict=True, ge=1)]
    metric: Literal["l2", "ip", "cosine"] = "l2"
    index: Annotated[str, Field(min_length=1, max_length=256)] = "Flat"

    @field_validator("index")
    @classmethod
    def _bounded(cls, value: str) -> str:
        problem = index_description_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class CollectionOut(BaseModel):
    name: str
    dim: int
    metric: str
    index: str
    count: int
    lsn: str
    created_at: float
    snapshot_lsn: str | None = None


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class AddVectors(Body):
    vectors: Annotated[list[Vector], Field(min_length=1)]
    ids: list[VectorId] | None = None
    metadata: list[dict[str, Any] | None] | None = None


class DeleteVectors(Body):
    ids: Annotated[list[VectorId], Field(min_length=1)]


class SearchParams(Body):
    nprobe: Annotated[int, Field(strict=True, ge=1, le=65536)] | None = None
    efSearch: Annotated[int, Field(strict=True, ge=1, le=65536)] | None = None

    def as_dict(self) -> dict[str, int]:
        return self.model_dump(exclude_none=True)


class SearchRequest(Body):
    vector: Vector | None = None
    vectors: Annotated[list[Vector], Field(min_length=1)] | None = None
    k: Annotated[int, Field(strict=True, ge=1)] = 10
    params: SearchParams | None = None
    include_metadata: StrictBool = False
    include_vectors: StrictBool = False
    consistency: Literal["strong", "session", "eventual"] = "strong"
    min_lsn: Lsn | None = None


class Hit(BaseModel):
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None


class SearchResponse(BaseModel):
    results: list[list[Hit]]
    lsn: str
    took_ms: float
    worker: str | None = None


class VectorOut(BaseModel):
    id: str
    vector: list[float]
    metadata: dict[str, Any] | None = None


class JobAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str


class Progress(BaseModel):
    done: int
    total: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses a route may answer, all with the one error body."""
    return {status: {"model": ErrorBody} for status in statuses}


# Any /v1 route: no or unknown key (401), key not allowed (403), bad input (422), Redis down or too many
# waiting requests (503, with Retry-After); routes with a body add 413 and 415.
V1_ERRORS = (401, 403, 404, 409, 422, 503)
BODY_ERRORS = (413, 415)


class Job(BaseModel):
    job_id: str
    type: str
    collection: str | None = None
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    progress: Progress | None = None
    result: Any = None
    error: ErrorDetail | None = None


class JobSummary(BaseModel):
    """A job record without its result, as `GET /v1/jobs` lists it."""

    job_id: str
    type: str
    collection: str | None = None
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    progress: Progress | None = None
    error: ErrorDetail | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]
