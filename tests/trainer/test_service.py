"""The trainer's spec and settings: one route on this pool's queue, settings that name bad values."""

from __future__ import annotations

import pytest

from preannotate.settings import SettingsError, load
from preannotate.v1 import events_pb2
from services.trainer.service import build
from services.trainer.settings import TrainerSettings


def test_one_route_on_the_pools_topic(make_settings):
    spec = build(make_settings(machine_type="gpu-4"))
    assert spec.name == "trainer"
    [route] = spec.routes
    assert route.topic == "train.jobs.gpu-4"
    assert route.stage == events_pb2.JOB_STAGE_TRAIN
    assert route.group == "preannotate-trainer-gpu-4"


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PREANNOTATE_MACHINE_TYPES", "cpu=0,gpu-2=2")
    monkeypatch.setenv("PREANNOTATE_MACHINE_TYPE", "gpu-2")
    monkeypatch.setenv("PREANNOTATE_TRAINER_CHECKPOINT_EVERY", "250")
    monkeypatch.setenv("PREANNOTATE_WEIGHTS_MIRROR", "http://mirror.internal/weights/")
    monkeypatch.setenv(
        "PREANNOTATE_WEIGHTS_URLS", '{"frcnn-res50-coco": "http://mirror.internal/r50.tar.gz"}'
    )
    settings = load(TrainerSettings)
    assert settings.machine_gpus == 2 and settings.trainer_checkpoint_every == 250
    # The starting weights: the weights store's settings, shared with `preannotate weights`.
    assert settings.weights_mirror == "http://mirror.internal/weights"
    assert settings.weights_urls == {"frcnn-res50-coco": "http://mirror.internal/r50.tar.gz"}
    assert not hasattr(settings, "trainer_coco_checkpoints")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PREANNOTATE_MACHINE_TYPE": "gpu-9"}, ["PREANNOTATE_MACHINE_TYPE", "gpu-9"]),
        ({"PREANNOTATE_TRAINER_CHECKPOINT_EVERY": "0"}, ["TRAINER_CHECKPOINT_EVERY"]),
        (
            {"PREANNOTATE_WEIGHTS_URLS": '{"yolo": "http://mirror/yolo.h5"}'},
            ["WEIGHTS_URLS", "unknown model type 'yolo'"],
        ),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, env, words):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        load(TrainerSettings)
    for word in words:
        assert word in str(err.value)
