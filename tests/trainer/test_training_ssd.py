"""ssd-mobilenet-v2-coco through the handler, on the CPU, from a tiny dataset in storage.

The tests below read what one job (the session fixture ``ssd_run`` of
conftest.py) left in storage and returned. Resuming after a shutdown is in
test_handler.py, after a killed process in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from preannotate import layout, topics
from preannotate.classes import classes_csv
from preannotate.keys import model_prefix
from preannotate.storage import LocalStorage, read_manifest
from preannotate.v1 import events_pb2
from services.trainer.handlers import handle_dataset_exported
from services.trainer.settings import TrainerSettings
from tests.fakes import FakeContext
from tests.trainer.conftest import cpu_settings
from tests.trainer.datasets import write_dataset

#: Trains or builds real TensorFlow models: left out of `make test-fast`.
pytestmark = pytest.mark.tf


def test_progress_every_step_and_both_checkpoints(ssd_run):
    assert ssd_run["ctx"].progress_steps() == [1, 2, 3, 4, 5, 6]
    keys = ssd_run["storage"].list(ssd_run["prefix"] + "checkpoints/")
    assert sorted({k.split("/")[-2] for k in keys}) == ["ckpt-3", "ckpt-6"]


def test_the_training_step_is_traced_once(ssd_run):
    # the optimizer's slots exist before the first step, so nothing makes TensorFlow
    # trace the whole model a second time
    assert ssd_run["traces"] == [1]


def test_model_trained_event(ssd_run):
    outcome = ssd_run["outcome"]
    assert len(outcome.emits) == 1 and outcome.emits[0].topic == topics.MODEL_TRAINED
    event: events_pb2.ModelTrained = outcome.emits[0].message
    assert event.job_id == ssd_run["msg"].job_id
    assert (event.model.namespace, event.model.name, event.model.version) == (
        "default",
        ssd_run["name"],
        1,
    )
    assert event.model_prefix == ssd_run["prefix"]
    assert event.checkpoint == ssd_run["prefix"] + "checkpoints/ckpt-6/ckpt-6"
    assert list(event.classes) == ["rect", "ellipse"]
    assert event.steps == 6 and event.input_size == 128
    assert {"mAP", "mAP@0.5"} <= set(event.metrics)
    assert event.dataset_prefix == ssd_run["msg"].dataset_prefix
    assert event.cvat.task_id == 7


def test_what_lands_under_the_model_prefix(ssd_run):
    storage, prefix = ssd_run["storage"], ssd_run["prefix"]
    keys = {k[len(prefix) :] for k in storage.list(prefix)}
    assert {
        "checkpoints/ckpt-6/ckpt-6.index",
        "classes.csv",
        "experiment.yaml",
        "metrics.json",
        "manifest.json",
    } <= keys
    assert any(k.startswith("tensorboard/train/events.out.tfevents") for k in keys)
    assert any(k.startswith("tensorboard/eval/events.out.tfevents") for k in keys)
    # Both checkpoints fit in trainer_keep_checkpoints=2.
    assert "checkpoints/ckpt-3/ckpt-3.index" in keys
    assert storage.get(prefix + "classes.csv").decode() == classes_csv(["rect", "ellipse"])
    metrics = json.loads(storage.get(prefix + "metrics.json"))
    assert {"mAP", "mAP@0.5"} <= set(metrics["metrics"]) and "AP" in metrics["coco"]
    manifest = read_manifest(storage, prefix)
    assert manifest["kind"] == "model" and manifest["model_type"] == "ssd-mobilenet-v2-coco"
    assert manifest["checkpoint"] == prefix + "checkpoints/ckpt-6/ckpt-6"
    assert manifest["init"]["init"] == "random"
    assert manifest["plan"]["epochs"] == "6 (user)"
    assert {
        "classes.csv",
        "experiment.yaml",
        "metrics.json",
        "checkpoints/ckpt-6/ckpt-6.index",
    } <= set(manifest["files"])


def test_status_says_what_was_used(ssd_run):
    details = ssd_run["ctx"].details()
    assert details["epochs"] == "6 (user)" and details["init"] == "random"
    assert details["batch_size"] == "2" and details["model"] == f"default/{ssd_run['name']}/1"
    progress = [r["progress"] for r in ssd_run["ctx"].reports if r.get("progress")]
    last = progress[-1]
    assert last.total == 6 and last.loss > 0 and last.learning_rate > 0
    assert all(p.images_per_second >= 0 and p.eta_seconds >= 0 for p in progress)
    assert ssd_run["ctx"].reports[-1]["model"].version == 1


def test_the_checkpoint_restores_into_the_model_experiment_yaml_describes(ssd_run):
    """What the converter does: rebuild from experiment.yaml, restore the checkpoint."""
    from preannotate.vision import experiment

    storage, prefix, tmp = (
        ssd_run["storage"],
        ssd_run["prefix"],
        ssd_run["settings"].trainer_work_dir,
    )
    params = experiment.load(storage.get(prefix + "experiment.yaml").decode())
    _restore(storage, prefix, params, 6, tmp / "restore")


def test_a_redelivered_finished_job_only_re_emits(ssd_run):
    ctx = FakeContext(ssd_run["storage"])
    outcome = asyncio.run(
        handle_dataset_exported(ssd_run["msg"], ctx, settings=ssd_run["settings"])
    )
    assert outcome.emits[0].message == ssd_run["outcome"].emits[0].message
    assert ctx.reports == []
    assert ctx.log.lines and "already trained" in ctx.log.lines[0][1]


def test_the_next_job_gets_the_next_version(ssd_run):
    """A second job for the same model name claims version 2 (no training needed to see it)."""
    from services.trainer import versions

    storage, name = ssd_run["storage"], ssd_run["name"]
    assert versions.claim(storage, "default", name, "job-2", {}) == 2
    assert versions.claim(storage, "default", name, "job-2", {}) == 2
    assert versions.claim(storage, "default", name, ssd_run["msg"].job_id, {}) == 1
    assert layout.finished_versions(storage, "default", name) == [1]
    storage.delete_prefix(model_prefix("default", name, 2))


def test_settings_are_frozen(ssd_run):
    with pytest.raises(ValidationError, match="frozen"):
        ssd_run["settings"].machine_type = "gpu-4"
    assert isinstance(ssd_run["settings"], TrainerSettings)


def test_crops_of_frames_at_an_automatic_input_size(tmp_path):
    """input_size=auto from the manifest's frame sizes; crop_size steps; evaluated,
    written and restorable at the input size, as the converter exports it; trained
    with Adam, whose slots the checkpoint holds beside the model."""

    from preannotate.vision import experiment

    storage = LocalStorage(tmp_path / "storage")
    settings = cpu_settings(tmp_path)
    data = write_dataset(storage, train_images=4, val_images=2, size=250)
    text = (
        "input_size=auto;crop_size=128;epochs=2;batch_size=2;warmup_steps=1;pretrained=false;"
        "optimizer=adam;initial_learning_rate=0.001"
    )
    ctx = FakeContext(storage)
    asyncio.run(
        handle_dataset_exported(
            data.event("ssd-mobilenet-v2-coco", text, model_name="crops"), ctx, settings=settings
        )
    )
    details = ctx.details()
    assert details["input_size"] == "256" and details["crop_size"] == "128"
    assert details["crop_objects"] == "0.5"  # the default with crops: preannotate.vision.crops
    assert details["optimizer"] == "adam"
    layers, rest = details["batchnorm"].split(" ", 1)  # PREANNOTATE_TRAINER_NORM_BATCHES=4
    assert int(layers) > 50 and rest == "layers' averages from 4 training batches"
    assert details["input_size_source"] == "auto from the frames' median longer side 250 px"
    prefix = model_prefix("default", "crops", 1)
    metrics = json.loads(storage.get(prefix + "metrics.json"))
    assert "mAP@0.5" in metrics["metrics"]
    params = experiment.load(storage.get(prefix + "experiment.yaml").decode())
    assert params.task.model.input_size == [256, 256, 3]
    assert params.trainer.optimizer_config.optimizer.type == "adam"
    _restore(storage, prefix, params, 2, tmp_path / "restore")


def _restore(storage, prefix: str, params, step: int, folder) -> None:
    """What the converter does: the model ``params`` describes, at its input size,
    restored from the stored checkpoint of ``step``; every variable must be found."""
    import tensorflow as tf
    from official.core import task_factory

    for key in storage.list(prefix + f"checkpoints/ckpt-{step}/"):
        storage.download_file(key, folder / key.rsplit("/", 1)[1])
    model = task_factory.get_task(params.task).build_model()
    size = params.task.model.input_size
    model(tf.zeros([1, *size]), training=True)
    status = tf.train.Checkpoint(model=model).read(str(folder / f"ckpt-{step}"))
    status.expect_partial().assert_existing_objects_matched()
