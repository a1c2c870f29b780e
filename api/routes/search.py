from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth import Principal
from api.catalog import CollectionCache
from api.deps import CatalogDep, CollectionName, PrincipalDep, SearcherDep, SettingsDep, WaitSearch
from api.dispatch import Pending, RawResult
from api.searcher import Searcher
from api.strict_json import StrictJSONRoute
from common import codec, filters
from common.errors import InvalidInput
from common.schemas import BODY_ERRORS, V1_ERRORS, JobAccepted, SearchRequest, SearchResponse, error_responses
from common.settings import Settings

router = APIRouter(prefix="/v1/collections/{name}", tags=["search"], route_class=StrictJSONRoute,
                   responses=error_responses(*V1_ERRORS, *BODY_ERRORS))


def query_matrix(body: SearchRequest, dim: int, max_queries: int) -> Any:
    if (body.vector is None) == (body.vectors is None):
        raise InvalidInput("give exactly one of vector or vectors", "vector")
    rows = [body.vector] if body.vector is not None else body.vectors
    assert rows is not None
    field = "vector" if body.vector is not None else "vectors"
    if len(rows) > max_queries:
        raise InvalidInput(f"at most {max_queries} query vectors per request", field)
    if body.vector is not None and len(body.vector) != dim:
        raise InvalidInput(f"has dimension {len(body.vector)}, the collection's is {dim}", "vector")
    return codec.matrix_from_rows(rows, dim, field)


@router.post("/search", response_model=SearchResponse, response_model_exclude_unset=True,
             responses={202: {"model": JobAccepted}, **error_responses(429)})
async def search(name: CollectionName, body: SearchRequest, catalog: CatalogDep, searcher: SearcherDep,
                 principal: PrincipalDep, settings: SettingsDep,
                 wait: WaitSearch = None) -> Any:
    """Search one or many query vectors. Waits up to `wait` seconds (default 30) for the hits; 202 with
    the job link if they are not ready by then (the job goes on and stays fetchable). 429 with Retry-After
    when too many searches like this one already wait for a batch in this API process."""
    outcome = await answer(name, body, catalog, searcher, principal, settings, wait)
    return outcome.response() if isinstance(outcome, Pending | RawResult) else outcome


async def answer(name: str, body: SearchRequest, catalog: CollectionCache, searcher: Searcher, principal: Principal,
                 settings: Settings, wait: float | None) -> dict[str, Any] | Pending | RawResult:
    """A validated search: the route's work, shared with its fast path (api/fast_search.py)."""
    principal.require(name, write=False)
    col = await catalog.get(name)
    if body.k > settings.max_k:
        raise InvalidInput(f"k must be at most {settings.max_k}", "k")
    if body.k + body.offset > settings.max_k_with_offset:
        raise InvalidInput(f"k + offset must be at most {settings.max_k_with_offset}", "offset")
    where = body.where
    if body.consistency == "session" and body.min_lsn is None:
        raise InvalidInput("consistency 'session' needs min_lsn", "min_lsn")
    queries = query_matrix(body, col.dim, settings.max_query_vectors)
    if where is not None and filters.never_matches(where):  # answered here: no job, no worker
        return {"results": [[] for _ in range(len(queries))], "lsn": "0-0", "took_ms": 0.0, "plan": "empty"}
    return await searcher.search(col, queries, body, principal.scope,
                                 settings.search_wait_default_s if wait is None else wait)
