"""The trainer's Prometheus metrics: gauges with one series per running job
(labels job_id, model_type), how long jobs waited in their pool's queue, and the
promotion gate's decisions: counted, and per model (labels namespace, model;
versions are gauge values, not labels) the figures of its promotion log after
the gate's last decision (``preannotate.telemetry.promotion``).

Served on the service's /metrics with the platform's metrics
(``preannotate.telemetry.metrics``); a job's series are removed when it ends,
a model's gate figures stay while the process lives (a pool at 0 replicas has
none: the dashboard reads them with ``last_over_time``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from preannotate.telemetry.promotion import PromotionFigures
from services.trainer.progress import TrainProgress

LABELS = ["job_id", "model_type"]

STEP = Gauge("preannotate_trainer_step", "Training step reached", LABELS)
TOTAL_STEPS = Gauge("preannotate_trainer_total_steps", "Training steps of the job", LABELS)
LOSS = Gauge("preannotate_trainer_loss", "Training loss at the last report", LABELS)
IMAGES_PER_SECOND = Gauge(
    "preannotate_trainer_images_per_second", "Training throughput since the last report", LABELS
)
LEARNING_RATE = Gauge("preannotate_trainer_learning_rate", "Current learning rate", LABELS)
ETA_SECONDS = Gauge("preannotate_trainer_eta_seconds", "Estimated seconds to the end", LABELS)
PROGRESS_RATIO = Gauge("preannotate_trainer_progress_ratio", "step / total steps", LABELS)
JOBS_RUNNING = Gauge("preannotate_trainer_jobs_running", "Training jobs running in this worker")
PROMOTION_DECISIONS = Counter(
    "preannotate_trainer_promotion_decisions_total",
    "Promotion gate decisions on newly trained versions (promoted or refused)",
    ["decision"],
)
# At 0 from the start: increase() needs a sample before a process's first decision.
for _decision in ("promoted", "refused"):
    PROMOTION_DECISIONS.labels(_decision)

MODEL = ["namespace", "model"]
GATE_CANDIDATE_VERSION = Gauge(
    "preannotate_trainer_gate_candidate_version",
    "The newest version of the model the promotion gate decided",
    MODEL,
)
GATE_CANDIDATE_MAP = Gauge(
    "preannotate_trainer_gate_candidate_map",
    "mAP@0.5 on the model's frozen evaluation set of the newest version the gate decided "
    "(NaN: not measured)",
    MODEL,
)
GATE_PROMOTED_VERSION = Gauge(
    "preannotate_trainer_gate_promoted_version",
    "The model's promoted version after the gate's last decision",
    MODEL,
)
GATE_PROMOTED_MAP = Gauge(
    "preannotate_trainer_gate_promoted_map",
    "mAP@0.5 of the promoted version on the model's frozen evaluation set, after the "
    "gate's last decision (NaN: not recorded)",
    MODEL,
)
GATE_REFUSALS_IN_A_ROW = Gauge(
    "preannotate_trainer_gate_refusals_in_a_row",
    "Versions the gate refused since the model's last promotion (by the gate or a person) "
    "or rollback",
    MODEL,
)

#: Up to a day: a GPU pool at 0 replicas waits minutes for a node, a busy one hours.
QUEUE_WAIT_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 57600, 86400)
QUEUE_WAIT_SECONDS = Histogram(
    "preannotate_trainer_queue_wait_seconds",
    "Seconds from a job's DatasetExported on train.jobs.<machine_type> (its ce_time) "
    "to the start of its training",
    ["machine_type"],
    buckets=QUEUE_WAIT_BUCKETS,
)

_PER_JOB = (STEP, TOTAL_STEPS, LOSS, IMAGES_PER_SECOND, LEARNING_RATE, ETA_SECONDS, PROGRESS_RATIO)


def observe(job_id: str, model_type: str, progress: TrainProgress) -> None:
    labels = (job_id, model_type)
    STEP.labels(*labels).set(progress.step)
    TOTAL_STEPS.labels(*labels).set(progress.total)
    LOSS.labels(*labels).set(progress.loss)
    IMAGES_PER_SECOND.labels(*labels).set(progress.images_per_second)
    LEARNING_RATE.labels(*labels).set(progress.learning_rate)
    ETA_SECONDS.labels(*labels).set(progress.eta_seconds)
    PROGRESS_RATIO.labels(*labels).set(progress.step / progress.total if progress.total else 0.0)


def forget(job_id: str, model_type: str) -> None:
    """Drop a finished job's series."""
    for gauge in _PER_JOB:
        with contextlib.suppress(KeyError):
            gauge.remove(job_id, model_type)


def observe_queue_wait(
    machine_type: str, headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """Count a training that starts now: the seconds since its event was queued.

    The queue time is the record's CloudEvents ``ce_time`` (set when the exporter
    published it; a redelivered or replayed record keeps it, so its wait counts
    from the first queuing). A record without a readable one is not counted.
    """
    stamp = (headers or {}).get("ce_time", "")
    try:
        queued = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
    waited = max(0.0, (time.time() if now is None else now) - queued)
    QUEUE_WAIT_SECONDS.labels(machine_type).observe(waited)
    return waited


def observe_gate(namespace: str, name: str, figures: PromotionFigures) -> None:
    """The model's gate figures, after a decision (``figures`` of its promotion log)."""
    labels = (namespace, name)
    GATE_CANDIDATE_VERSION.labels(*labels).set(figures.candidate_version)
    GATE_CANDIDATE_MAP.labels(*labels).set(figures.candidate_map)
    GATE_PROMOTED_VERSION.labels(*labels).set(figures.promoted_version)
    GATE_PROMOTED_MAP.labels(*labels).set(figures.promoted_map)
    GATE_REFUSALS_IN_A_ROW.labels(*labels).set(figures.refusals_in_a_row)
