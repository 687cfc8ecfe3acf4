"""The trainer as the runner sees it: one route, this pool's ``train.jobs.<machine>``."""

from __future__ import annotations

from functools import partial

from preannotate import topics
from preannotate.handler import Route
from preannotate.service import ServiceSpec
from preannotate.v1 import events_pb2
from services.trainer.handlers import handle_dataset_exported
from services.trainer.settings import TrainerSettings

NAME = "trainer"


def build(settings: TrainerSettings) -> ServiceSpec:
    """The trainer's spec: one job at a time from its pool's queue; builds no clients."""
    return ServiceSpec(
        name=NAME,
        routes=[
            Route(
                topic=topics.train_jobs(settings.machine_type),
                handler=partial(handle_dataset_exported, settings=settings),
                stage=events_pb2.JOB_STAGE_TRAIN,
                group=f"preannotate-trainer-{settings.machine_type}",
            )
        ],
    )
