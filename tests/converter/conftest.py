"""Fixtures of the converter tests: trained models from the trainer, converted once a session.

``ssd_trained`` / ``mask_trained``: a folder with ``storage/`` (dataset and
model version, as the trainer leaves them) and ``event.json`` (its
ModelTrained), built by ``tests.converter.trained`` and cached between runs.
``ssd_converted`` / ``mask_converted``: the converter's handler run once on a
copy, with TFLite on, and what it left.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format

from preannotate.handler import Outcome
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2
from services.converter.handlers import handle_model_trained
from services.converter.settings import ConverterSettings
from tests import prebuild
from tests.converter import trained
from tests.fakes import FakeContext


@dataclass
class Converted:
    storage: LocalStorage
    msg: events_pb2.ModelTrained
    settings: ConverterSettings
    ctx: FakeContext
    outcome: Outcome

    @property
    def event(self) -> events_pb2.ModelConverted:
        return self.outcome.emits[0].message

    @property
    def export_dir(self) -> Path:
        return self.storage.root / self.event.serving_path


def event_of(folder: Path) -> events_pb2.ModelTrained:
    document = json.loads((folder / "event.json").read_text())
    return json_format.ParseDict(document, events_pb2.ModelTrained())


def copy_storage(folder: Path, dest: Path) -> LocalStorage:
    shutil.copytree(folder / "storage", dest)
    return LocalStorage(dest)


def settings_for(tmp: Path, **overrides) -> ConverterSettings:
    values = {"storage": "local", "storage_root": tmp / "storage", "convert_work_dir": tmp / "work"}
    return ConverterSettings(**{**values, **overrides})


def convert(folder: Path, tmp: Path, **overrides) -> Converted:
    storage = copy_storage(folder, tmp / "storage")
    msg = event_of(folder)
    settings = settings_for(tmp, **overrides)
    ctx = FakeContext(storage)
    outcome = asyncio.run(handle_model_trained(msg, ctx, settings=settings))
    return Converted(storage, msg, settings, ctx, outcome)


prebuild.register("ssd_trained", lambda: trained.cached("ssd"))
prebuild.register("mask_trained", lambda: trained.cached("maskrcnn"))


@pytest.fixture(scope="session")
def ssd_trained() -> Path:
    return prebuild.result("ssd_trained")


@pytest.fixture(scope="session")
def mask_trained() -> Path:
    return prebuild.result("mask_trained")


@pytest.fixture(scope="session")
def ssd_converted(ssd_trained, tmp_path_factory) -> Converted:
    return convert(ssd_trained, tmp_path_factory.mktemp("ssd"), convert_tflite=True)


@pytest.fixture(scope="session")
def mask_converted(mask_trained, tmp_path_factory) -> Converted:
    return convert(mask_trained, tmp_path_factory.mktemp("mask"), convert_tflite=True)
