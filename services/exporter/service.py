"""The exporter as the runner sees it: one route, ``task.annotated`` -> the handler."""

from __future__ import annotations

from functools import partial

from preannotate import topics
from preannotate.handler import Route
from preannotate.service import ServiceSpec
from preannotate.v1 import events_pb2
from services.exporter.handlers import handle_task_annotated
from services.exporter.settings import ExporterSettings

NAME = "exporter"


def build(settings: ExporterSettings) -> ServiceSpec:
    """The exporter's spec; builds no clients (the handler makes its CVAT client per job)."""
    return ServiceSpec(
        name=NAME,
        routes=[
            Route(
                topic=topics.TASK_ANNOTATED,
                handler=partial(handle_task_annotated, settings=settings),
                stage=events_pb2.JOB_STAGE_EXPORT,
            )
        ],
    )
