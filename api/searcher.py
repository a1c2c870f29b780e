"""Turning a validated search request into a search job."""

from __future__ import annotations

from typing import Any

import numpy as np

from api.dispatch import Dispatcher, Pending
from common import codec
from common.celery_app import SEARCH
from common.collections import Collection
from common.schemas import SearchRequest


def search_kwargs(col: Collection, queries: np.ndarray, body: SearchRequest) -> dict[str, Any]:
    return {"collection": col.name, "uid": col.uid, "vectors_b64": codec.encode_vectors(queries), "k": body.k,
            "params": body.params.as_dict() if body.params else {}, "include_metadata": body.include_metadata,
            "include_vectors": body.include_vectors, "consistency": body.consistency, "min_lsn": body.min_lsn}


class Searcher:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def search(self, col: Collection, queries: np.ndarray, body: SearchRequest, scope: str,
                     wait: float) -> dict[str, Any] | Pending:
        return await self.dispatcher.submit("search", SEARCH, col.name, search_kwargs(col, queries, body),
                                            wait=wait, scope=scope)
