"""Fixtures of the trainer tests: storage, settings for tiny CPU runs, one SSD model.

``ssd_run`` trains ssd-mobilenet-v2-coco once per session (6 steps at 128 px);
the tests of the finished model and the base-model tests share it, since every
model built costs a TensorFlow trace of its training step.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from preannotate.keys import model_prefix
from preannotate.storage import LocalStorage
from services.trainer.handlers import handle_dataset_exported
from services.trainer.settings import TrainerSettings
from tests.fakes import FakeContext
from tests.trainer.datasets import write_dataset

SSD_ARGS = "epochs=6;batch_size=2;input_size=128;checkpoint_every=3;warmup_steps=1;pretrained=false"
SSD_NAME = "boxes"


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def unreachable_mirror() -> str:
    """A local base URL nothing listens on: a weights fetch from it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mirror"


@pytest.fixture
def make_settings(tmp_path):
    def make(**overrides) -> TrainerSettings:
        values = {
            "storage": "local",
            "storage_root": tmp_path / "storage",
            "machine_types": "cpu=0,gpu-1=1,gpu-4=4",
            "machine_type": "cpu",
            "trainer_work_dir": tmp_path / "work",
            "trainer_progress_seconds": 0.001,
            "trainer_summary_every": 1,
            "trainer_keep_checkpoints": 2,
            "trainer_keep_local": False,
            **overrides,
        }
        return TrainerSettings(**values)

    return make


def cpu_settings(root, **overrides) -> TrainerSettings:
    """Settings of a CPU worker whose storage and work folder are under ``root``."""
    values = {
        "storage": "local",
        "storage_root": root / "storage",
        "machine_types": "cpu=0",
        "machine_type": "cpu",
        "trainer_work_dir": root / "work",
        "trainer_progress_seconds": 0.001,
        "trainer_summary_every": 1,
        **overrides,
    }
    return TrainerSettings(**values)


@pytest.fixture(scope="session")
def ssd_run(tmp_path_factory):
    """ssd-mobilenet-v2-coco trained once (6 steps at 128 px, a checkpoint every 3)."""
    root = tmp_path_factory.mktemp("ssd")
    storage = LocalStorage(root / "storage")
    settings = cpu_settings(root, trainer_keep_checkpoints=2)
    data = write_dataset(storage, train_images=6, val_images=2, size=96)
    msg = data.event("ssd-mobilenet-v2-coco", SSD_ARGS, model_name=SSD_NAME)
    ctx = FakeContext(storage)
    from services.trainer import training  # TensorFlow: only where a model trains

    steps = []
    make_step = training.Session._make_step

    def counted(session):
        steps.append(make_step(session))
        return steps[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.Session, "_make_step", counted)
        outcome = asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))
    return {
        "traces": [step.experimental_get_tracing_count() for step in steps],
        "storage": storage,
        "settings": settings,
        "msg": msg,
        "ctx": ctx,
        "outcome": outcome,
        "prefix": model_prefix("default", SSD_NAME, 1),
        "name": SSD_NAME,
    }
