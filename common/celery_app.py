"""The one Celery configuration, shared by the API (which only sends) and the workers (which run)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from celery import Celery

from common.settings import Settings, get_settings

# Stable task names: the API, `vecq ingest` and any Python producer send these by name.
SEARCH = "vecq.search"
ADD = "vecq.add"
DELETE = "vecq.delete"
GET = "vecq.get"
CREATE_COLLECTION = "vecq.create_collection"
INGEST = "vecq.ingest"
SEAL = "vecq.seal"
COMPACT = "vecq.compact"
COUNT = "vecq.count"
PURGE = "vecq.purge"
POISON = "vecq.test.poison"


def celery_url(url: str) -> str:
    """A rediss:// URL without `ssl_cert_reqs` means "verify the server" to redis-py, but Celery's result
    backend refuses it and kombu's broker would then skip the certificate check. Default it to `required`
    so that one VECQ_REDIS_URL means the same thing to the API, the workers and Celery."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return url
    return parts._replace(query="&".join(q for q in (parts.query, "ssl_cert_reqs=required") if q)).geturl()


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url = celery_url(settings.effective_redis_url)
    app = Celery("vecq", broker=url, backend=url)
    # Unacked messages come back after the visibility timeout: it must outlast the longest job.
    # A socket timeout bounds a publish to a Redis that vanished without closing the connection (kombu waits
    # forever otherwise); the API publishes on its event loop. Longer than kombu's 1 s BRPOP.
    transport = {"visibility_timeout": settings.redelivery_window_s, "socket_timeout": 5}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle: a message must not be able to run code when decoded
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a killed child's job is redelivered; jobs.claim bounds the loop
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,  # outcomes live in vecq's own job records (common/jobs.py)
        result_expires=settings.job_ttl_s,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.soft_limit(settings.task_time_limit_s),
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        worker_proc_alive_timeout=settings.worker_init_timeout_s,
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # vecq logs to stderr itself (common/logs.py)
        # Fail fast when Redis is down: the API answers 503 instead of hanging in a publish retry loop.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                   "interval_max": 0.5},
        broker_connection_timeout=2,
        redis_socket_connect_timeout=2,
    )
    return app
