"""Topic names and the one message type each topic carries (docs/architecture.md)."""

from __future__ import annotations

from google.protobuf.message import Message

from preannotate.errors import BadEvent
from preannotate.keys import check_name
from preannotate.v1 import events_pb2

TASK_ANNOTATED = "task.annotated"
TRAIN_JOBS_PREFIX = "train.jobs."
MODEL_TRAINED = "model.trained"
MODEL_CONVERTED = "model.converted"
ANNOTATION_REQUESTED = "annotation.requested"
TASK_PREANNOTATED = "task.preannotated"
JOB_STATUS = "job.status"

_FIXED: dict[str, type[Message]] = {
    TASK_ANNOTATED: events_pb2.TaskAnnotated,
    MODEL_TRAINED: events_pb2.ModelTrained,
    MODEL_CONVERTED: events_pb2.ModelConverted,
    ANNOTATION_REQUESTED: events_pb2.AnnotationRequested,
    TASK_PREANNOTATED: events_pb2.TaskPreannotated,
    JOB_STATUS: events_pb2.JobStatus,
}

#: Topics whose records are snapshots keyed by job id (log compaction on).
COMPACTED = frozenset({JOB_STATUS})


def train_jobs(machine_type: str) -> str:
    """The job queue of one trainer pool: ``train.jobs.<machine>``."""
    return TRAIN_JOBS_PREFIX + check_name(machine_type, "machine type")


def message_type(topic: str) -> type[Message]:
    """The message class that ``topic`` carries (its DLQ carries the same)."""
    base = topic.removesuffix(".dlq")
    if base in _FIXED:
        return _FIXED[base]
    if base.startswith(TRAIN_JOBS_PREFIX):
        return events_pb2.DatasetExported
    raise BadEvent(f"unknown topic {topic!r}; known: {sorted(_FIXED)} and train.jobs.<machine>")


def all_topics(machine_types: list[str] | tuple[str, ...] = ("cpu",)) -> list[str]:
    """Every product topic for the given trainer pools, without DLQs."""
    return sorted([*_FIXED, *(train_jobs(m) for m in machine_types)])


def stage_consuming(topic: str) -> int | None:
    """The job stage that the topic's records queue for; None for a job's last event.

    The runner uses it to say where a job went after a stage finished:
    ``train.jobs.cpu`` means "queued for training"; ``model.converted`` and
    ``task.preannotated`` end their jobs.
    """
    from preannotate.v1 import events_pb2

    if topic.startswith(TRAIN_JOBS_PREFIX):
        return events_pb2.JOB_STAGE_TRAIN
    return {
        TASK_ANNOTATED: events_pb2.JOB_STAGE_EXPORT,
        MODEL_TRAINED: events_pb2.JOB_STAGE_CONVERT,
        ANNOTATION_REQUESTED: events_pb2.JOB_STAGE_ANNOTATE,
    }.get(topic)
