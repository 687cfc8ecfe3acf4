"""The trainer's Prometheus gauges, one series per running job (labels job_id, model_type).

Served on the service's /metrics with the platform's metrics
(``preannotate.telemetry.metrics``); a job's series are removed when it ends.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Gauge

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
