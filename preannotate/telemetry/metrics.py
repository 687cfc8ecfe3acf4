"""The Prometheus metrics every service exports (served on /metrics by
``preannotate.ops``).

Names are part of the operations contract: deploy/grafana dashboards query
them, and tests/platform check that every metric a dashboard uses is defined
here or in a service's own ``metrics.py``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "preannotate_events_consumed_total",
    "Records taken from a topic by a service's handler",
    ["service", "topic"],
)
EVENTS_FAILED = Counter(
    "preannotate_events_failed_total",
    "Handler runs that raised, by error type (retries count each time)",
    ["service", "topic", "error"],
)
EVENTS_DEAD_LETTERED = Counter(
    "preannotate_events_dead_lettered_total",
    "Records sent to <topic>.dlq",
    ["service", "topic"],
)
EVENTS_PUBLISHED = Counter(
    "preannotate_events_published_total",
    "Records published by a service",
    ["service", "topic"],
)
EVENTS_DUPLICATE = Counter(
    "preannotate_events_duplicate_total",
    "Redelivered records recognised by job id and stage and only re-published",
    ["service", "topic"],
)
STATUS_REPORTS_FAILED = Counter(
    "preannotate_status_reports_failed_total",
    "Job status reports from a handler's worker thread that could not be published "
    "(the work went on; see preannotate.progress)",
    ["service"],
)
#: Upper bounds of HANDLER_SECONDS: milliseconds for the light services, up to
#: a day for a training job (the train.jobs.* handler runs for hours).
HANDLER_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
    *(3600, 7200, 4 * 3600, 8 * 3600, 16 * 3600, 24 * 3600),
)
HANDLER_SECONDS = Histogram(
    "preannotate_handler_seconds",
    "Time a handler took per record",
    ["service", "topic"],
    buckets=HANDLER_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "preannotate_consumer_lag",
    "Records behind the end of each assigned partition",
    ["service", "topic", "partition"],
)
HANDLER_IN_FLIGHT = Gauge(
    "preannotate_handler_in_flight",
    "Records being handled now",
    ["service", "topic"],
)
JOBS = Gauge(
    "preannotate_jobs",
    "Jobs known to the job status view, by stage and state",
    ["stage", "state"],
)


def start_route(service: str, topic: str) -> None:
    """Create a consumed topic's series at 0 when its worker starts.

    A counter series that first appears at 1 shows no ``increase()`` (Prometheus
    has no earlier sample), so without this the first dead-lettered record of a
    topic would never fire PreannotateDeadLetters; a gauge at 0 lets
    ``== 0`` comparisons (PreannotateTrainingQueueStalled) see an idle consumer.
    """
    for counter in (EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_DUPLICATE):
        counter.labels(service, topic)
    HANDLER_IN_FLIGHT.labels(service, topic)
