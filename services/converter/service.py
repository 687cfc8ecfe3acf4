"""The converter as the runner sees it: one route, ``model.trained`` -> the handler."""

from __future__ import annotations

from functools import partial

from preannotate import topics
from preannotate.handler import Route
from preannotate.service import ServiceSpec
from preannotate.v1 import events_pb2
from services.converter.handlers import handle_model_trained
from services.converter.settings import ConverterSettings

NAME = "converter"


def build(settings: ConverterSettings) -> ServiceSpec:
    """The converter's spec; builds no clients (each job starts its own worker processes)."""
    return ServiceSpec(
        name=NAME,
        routes=[
            Route(
                topic=topics.MODEL_TRAINED,
                handler=partial(handle_model_trained, settings=settings),
                stage=events_pb2.JOB_STAGE_CONVERT,
            )
        ],
    )
