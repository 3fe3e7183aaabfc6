"""Prometheus metrics: requests, verdicts by outcome, latency, batch sizes.

With several worker processes every worker writes its samples to files in one directory
(``$PROMETHEUS_MULTIPROC_DIR``, which the server sets before any worker starts) and ``/metrics``
adds them up, so a scrape sees the whole service whichever worker answers it, and the counts of
a worker that died stay counted.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["ATTESTATIONS", "BATCH_ITEMS", "BATCH_SECONDS", "LATENCY", "REQUESTS", "render"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("mchsm_http_requests", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "mchsm_http_request_duration_seconds",
    "Time from the request's start to its answer",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
ATTESTATIONS = Counter(
    "mchsm_attestations",
    "Attestation attempts by outcome: the worst EAR status of an accepted or judged attempt "
    "(affirming, warning, contraindicated), or the session refusal (unknown, used, expired)",
    ["outcome"],
)
BATCH_ITEMS = Histogram(
    "mchsm_registry_batch_items",
    "Challenges and attempts committed together in one registry transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
BATCH_SECONDS = Histogram(
    "mchsm_registry_batch_seconds",
    "Time of one batch's registry transaction, commit included",
    buckets=_LATENCY_BUCKETS,
)


def render() -> tuple[bytes, str]:
    """The exposition text of every worker's samples, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
