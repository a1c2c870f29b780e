"""vecq workers: `celery -A worker worker --pool prefork --concurrency 1`.

OMP_NUM_THREADS is set before faiss is imported anywhere in the process: it is the only setting that covers
every thread (faiss.omp_set_num_threads affects the calling thread only).
"""

import os

from common.settings import get_settings

os.environ.setdefault("OMP_NUM_THREADS", str(get_settings().omp_threads))

from common.celery_app import make_celery

app = make_celery()

from worker import lifecycle, tasks  # noqa: E402

__all__ = ["app", "lifecycle", "tasks"]
