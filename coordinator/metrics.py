"""Prometheus metrics of the coordinator (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHECKINS = Counter("fedface_checkins_total", "Device check-ins", ["outcome"])
SUBMISSIONS = Counter("fedface_submissions_total", "Update submissions", ["outcome"])
ERRORS = Counter("fedface_errors_total", "Refused requests by error code", ["code"])
ROUND_DURATION = Histogram(
    "fedface_round_duration_seconds", "Round duration from creation to final state", ["state"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
AGGREGATION_SECONDS = Histogram(
    "fedface_aggregation_seconds", "Time to aggregate a round's updates",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
UPDATE_BYTES = Counter("fedface_update_bytes_total", "Bytes of accepted updates")
IS_DRIVER = Gauge("fedface_round_driver", "1 while this process holds the round-driver lease")
BLOB_GC_REMOVED = Counter("fedface_blob_gc_removed_total", "Blobs and staging files the collector removed", ["kind"])
BLOB_GC_BYTES = Counter("fedface_blob_gc_removed_bytes_total", "Bytes the blob collector removed")
