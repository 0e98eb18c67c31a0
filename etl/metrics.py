"""Prometheus metrics (prometheus_client), recorded where things happen and served by the API.

- ``marketpoll_cycles_total{job,provider,status}``: finished cycles.
- ``marketpoll_rows_loaded_total{job}`` / ``marketpoll_rows_rejected_total{job}``: rows inserted or
  changed / bars rejected by validation.
- ``marketpoll_request_seconds{provider}``: provider HTTP request latency (histogram, seconds).
- ``marketpoll_throttles_total{provider}``: throttled requests (HTTP 429, Alpha Vantage "Note").
- ``marketpoll_retries_total{provider}``: retried requests.
- ``marketpoll_data_freshness_seconds{job}``: seconds since the newest bar the job has loaded
  started, computed at scrape time; ``marketpoll_last_success_timestamp_seconds{job}``.
- ``marketpoll_missing_bars{job}``: bars missing from a named job's series over its recent session
  dates (the coverage ledger, checked after each of its cycles: :mod:`reports.coverage_status`).
- Cluster (``--cluster``, ``--worker``; scheduler/cluster.py): ``marketpoll_queue_depth{queue,status}``
  (chunks ``todo`` or ``doing`` per provider queue, refreshed at each node heartbeat),
  ``marketpoll_stalled_chunk_retries_total{queue}`` (chunks of dead nodes this node put back in
  the queue), ``marketpoll_slot_claim_seconds`` (histogram: claiming a slot and recording its chunks).
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

__all__ = ["REGISTRY", "CYCLES", "ROWS_LOADED", "ROWS_REJECTED", "REQUEST_SECONDS", "THROTTLES", "RETRIES",
           "LAST_SUCCESS", "MISSING_BARS", "observe_cycle",
           "QUEUE_DEPTH", "STALLED_RETRIES", "SLOT_CLAIM_SECONDS"]  # fmt: skip

#: marketpoll's own registry (the API serves it; tests read it without global state from other libraries).
REGISTRY = CollectorRegistry()

CYCLES = Counter("marketpoll_cycles", "Finished ETL cycles", ["job", "provider", "status"], registry=REGISTRY)
ROWS_LOADED = Counter("marketpoll_rows_loaded", "Rows inserted or changed", ["job"], registry=REGISTRY)
ROWS_REJECTED = Counter("marketpoll_rows_rejected", "Bars rejected by validation", ["job"], registry=REGISTRY)
REQUEST_SECONDS = Histogram(
    "marketpoll_request_seconds", "Provider HTTP request latency in seconds", ["provider"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
THROTTLES = Counter("marketpoll_throttles", "Throttled provider requests", ["provider"], registry=REGISTRY)
RETRIES = Counter("marketpoll_retries", "Retried provider requests", ["provider"], registry=REGISTRY)
LAST_SUCCESS = Gauge("marketpoll_last_success_timestamp_seconds", "Start of the job's last succeeded cycle (Unix s)",
                     ["job"], registry=REGISTRY)  # fmt: skip
MISSING_BARS = Gauge("marketpoll_missing_bars", "Bars missing from the job's series over its recent session dates",
                     ["job"], registry=REGISTRY)  # fmt: skip
QUEUE_DEPTH = Gauge("marketpoll_queue_depth", "Cluster chunks waiting (todo) or running (doing) per provider queue",
                    ["queue", "status"], registry=REGISTRY)  # fmt: skip
STALLED_RETRIES = Counter("marketpoll_stalled_chunk_retries", "Chunks of dead nodes put back in the queue by this node",
                          ["queue"], registry=REGISTRY)  # fmt: skip
SLOT_CLAIM_SECONDS = Histogram("marketpoll_slot_claim_seconds", "Claiming a job's fire slot and recording its chunks",
                               registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))  # fmt: skip

_newest: dict[str, float] = {}
_lock = threading.Lock()


class _Freshness:
    def collect(self):
        g = GaugeMetricFamily("marketpoll_data_freshness_seconds", "Seconds since the newest loaded bar started", labels=["job"])
        now = time.time()
        with _lock:
            for job, ts in sorted(_newest.items()):
                g.add_metric([job], max(0.0, now - ts))
        yield g


REGISTRY.register(_Freshness())


def observe_cycle(cycle) -> None:
    """Record a finished :class:`models.CycleResult`."""
    job = cycle.job_name
    CYCLES.labels(job, cycle.provider, cycle.status.value).inc()
    ROWS_LOADED.labels(job).inc(cycle.rows_loaded)
    ROWS_REJECTED.labels(job).inc(cycle.rows_rejected)
    if cycle.status.value == "succeeded":
        LAST_SUCCESS.labels(job).set(cycle.started_at.timestamp())
    newest = [o.newest_ts for o in cycle.outcomes if o.ok and o.newest_ts is not None]
    if newest:
        with _lock:
            _newest[job] = max(_newest.get(job, 0.0), max(newest).timestamp())
