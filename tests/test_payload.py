"""Unit: payload indexes (worker/payload.py) agree with the filter language's reference semantics
(common/filters.py matches) on random documents and random filters, sealed and growing alike."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from common import filters
from tests.test_filters import random_doc, random_filter
from worker.payload import GrowingPayload, PayloadIndex, mask


def test_sealed_and_growing_indexes_agree_with_matches(tmp_path: Path) -> None:
    rng = random.Random(15)
    docs = [random_doc(rng) for _ in range(400)]
    texts = [json.dumps(d) if d is not None else None for d in docs]
    PayloadIndex.save(tmp_path, texts)
    sealed = PayloadIndex.load(tmp_path)
    growing = GrowingPayload()
    for row, text in enumerate(texts):
        growing.add(row, text)
    checked = 0
    for _ in range(600):
        f = filters.parse(random_filter(rng))
        if f is None:
            continue
        want = np.array([filters.matches(f, d) for d in docs])
        assert (mask(f, sealed, len(docs)) == want).all(), filters.canonical(f)
        assert (mask(f, growing, len(docs)) == want).all(), filters.canonical(f)
        checked += int(want.any())
    assert checked > 100  # most random filters match something: the comparison is not vacuous
