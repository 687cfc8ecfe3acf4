"""The gateway's Prometheus counters (served on its /metrics with the platform's)."""

from __future__ import annotations

from prometheus_client import Counter

PROMOTIONS = Counter(
    "preannotate_gateway_promotions_total",
    "Versions promoted or rolled back by a person (PromoteModel, RollbackModel)",
    ["action"],
)
