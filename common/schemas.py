"""Request and response bodies of the HTTP API (API.md). Shape and types here; limits that depend on
settings or on the collection (dim, k max, id length) are checked by common/codec.py."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common import filters
from common.codec import index_description_problem
from common.status import JobStatus

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


class SegmentOut(BaseModel):
    id: str
    rows: int = Field(description="Rows written into the segment (some may be dead since: replaced or deleted).")
    deleted: int = Field(description="Ids its range deleted, which bury rows of older segments.")
    bytes: int = Field(description="Size of its files in the segment store.")
    spec: str
    first_lsn: str = Field(description="It covers the writes after this LSN ...")
    lsn: str = Field(description="... up to and including this one.")
    mapped: bool = Field(description="Opened with IO_FLAG_MMAP_IFC (shared page cache) rather than read in.")
    built_at: float
    build_s: float


class CollectionOut(BaseModel):
    name: str
    dim: int
    metric: str
    index: str
    count: int
    lsn: str
    created_at: float
    sealed_lsn: str = Field("0-0", description="Every write up to here is in a sealed segment.")
    sealed_rows: int = Field(0, description="Rows in sealed segments (dead ones included).")
    growing_rows: int = Field(0, description="Rows written since the newest seal, held in each worker's growing "
                              "segment until the next seal.")
    segments: list[SegmentOut] = Field(default_factory=list)


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class AddVectors(Body):
    vectors: Annotated[list[Vector], Field(min_length=1)]
    ids: list[VectorId] | None = None
    metadata: list[dict[str, Any] | None] | None = None


FILTER_DOC = ("Only vectors whose metadata matches (docs/filters.md): {\"lang\": \"en\"}, $eq $ne $gt $gte $lt $lte "
              "$in $nin $exists on fields (dotted paths for nested objects), $and $or $not.")
FilterBody = Annotated[dict[str, Any] | None, Field(
    description=FILTER_DOC,
    json_schema_extra={"examples": [{"lang": "en"}, {"year": {"$gte": 2020}, "tags": {"$in": ["ml", "ir"]}},
                                    {"$or": [{"lang": "en"}, {"draft": {"$exists": False}}]}]})]


class DeleteVectors(Body):
    ids: Annotated[list[VectorId], Field(min_length=1)] | None = None
    filter: FilterBody = None


class CountRequest(Body):
    filter: FilterBody = None
    consistency: Literal["strong", "session", "eventual"] = "strong"
    min_lsn: Lsn | None = None


class CountOut(BaseModel):
    count: int
    lsn: str


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
    filter: FilterBody = None
    score_threshold: Annotated[float, Field(allow_inf_nan=False, description=(
        "Only hits at least this close: score <= it for l2, >= it for ip and cosine (fewer than k if so)."
    ))] | None = None
    offset: Annotated[int, Field(strict=True, ge=0, description="Skip the best `offset` hits (paging; "
                                 "k + offset <= VECQ_MAX_K_WITH_OFFSET).")] = 0

    @cached_property
    def where(self) -> filters.Filter | None:
        """The parsed filter (InvalidInput naming its path), parsed once per request however often it is asked."""
        return filters.parse(self.filter)

    @cached_property
    def filter_text(self) -> str | None:
        """The filter in canonical form: the coalescing lane's key part and what the worker is sent."""
        return filters.canonical(self.where) if self.where is not None else None


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
    plan: Literal["index", "exact", "empty"] | None = Field(None, description=(
        "How the hits were found: through the index, by scoring a filter's matching rows one by one (few matched, "
        "or the index found fewer than k of them), or not at all (the filter can match nothing)."))


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


class JobSummary(BaseModel):
    """A job record without its result, as `GET /v1/jobs` lists it."""

    job_id: str
    type: str
    collection: str | None = None
    status: JobStatus
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    progress: Progress | None = None
    error: ErrorDetail | None = None


class Job(JobSummary):
    """A job record, as `GET /v1/jobs/{id}` shows it."""

    result: Any = None


class JobList(BaseModel):
    jobs: list[JobSummary]
