"""The model's frozen evaluation set and the promotion gate, with real TensorFlow training.

Three trainings of one model (tiny SSD, a few steps at 128 px, on the CPU):

1. job-1 (task 7: img1..img6 train, img7, img8 validation) freezes the set
   {7/img7, 7/img8}; version 1 is promoted (the first);
2. job-2 is a later export of the same task whose split moved: img1..img8 train
   (the frozen img7 and img8 among them), img9, img10 validation. The trainer
   drops img7 and img8 from its training files, trains on img9, img10 too and
   evaluates on the frozen set;
3. job-3 trains with ``eval=false``: not measured on the set, the gate refuses
   it, and the promoted version keeps being the one that serves.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import REGISTRY

from preannotate import layout, promotion
from preannotate.storage import LocalStorage, read_manifest
from services.trainer import evalset
from services.trainer.handlers import handle_dataset_exported
from tests.fakes import FakeContext
from tests.trainer.conftest import SSD_ARGS, cpu_settings
from tests.trainer.datasets import write_dataset

pytestmark = [pytest.mark.timeout(1200), pytest.mark.tf]

NS, NAME = "default", "gated"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gated")
    storage = LocalStorage(root / "storage")
    # trainer_keep_local: the tests read the files each job trained on
    settings = cpu_settings(root, trainer_keep_checkpoints=1, trainer_keep_local=True)
    first = write_dataset(storage, job_id="job-1", train_images=6, val_images=2, size=96)
    moved = write_dataset(storage, job_id="job-2", train_images=8, val_images=2, size=96, seed=1)
    third = write_dataset(storage, job_id="job-3", train_images=6, val_images=2, size=96, seed=2)
    outcomes, contexts = {}, {}
    for data, args in (
        (first, SSD_ARGS),
        (moved, SSD_ARGS),
        (third, SSD_ARGS.replace("epochs=6", "epochs=2") + ";eval=false"),
    ):
        msg = data.event("ssd-mobilenet-v2-coco", args, model_name=NAME)
        ctx = FakeContext(storage)
        outcomes[data.job_id] = asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))
        contexts[data.job_id] = ctx
    return {"storage": storage, "root": root, "outcomes": outcomes, "contexts": contexts}


def manifest(trained, version: int) -> dict:
    return read_manifest(trained["storage"], f"{NS}/models/{NAME}/{version}/")


def test_the_first_training_freezes_its_validation_split(trained):
    record = layout.read_evaluation_set(trained["storage"], NS, NAME)
    assert record["id"] == "job-1" and record["frozen_with_version"] == 1
    assert record["frames"] == [
        {"task_id": 7, "file_name": "img7.jpg"},
        {"task_id": 7, "file_name": "img8.jpg"},
    ]
    stored = trained["storage"].list(layout.evaluation_files_prefix(NS, NAME, "job-1"))
    assert [k.rsplit("/", 1)[1] for k in stored] == ["val-00000-of-00001.tfrecord"]
    first = manifest(trained, 1)["evaluation"]
    assert first["set"] == "job-1" and first["frozen_now"] and first["images"] == 2


def test_a_later_training_never_trains_on_the_set_and_is_measured_on_it(trained):
    second = manifest(trained, 2)
    assert second["evaluation"] == {
        "set": "job-1",
        "images": 2,
        "frozen_now": False,
        "excluded_from_training": 2,
        "dataset_val_images_unused": 0,
        "dataset_val_images_trained_on": 2,
        "source": "validation-split",
    }
    assert "mAP@0.5" in second["metrics"]
    split = trained["root"] / "work" / NS / "job-2" / "split"
    trained_on = evalset.file_names(sorted(split.glob("train-*.tfrecord")))
    # img1..img6 and the dataset's own validation split img9, img10 (the set measures now)
    assert sorted(trained_on) == sorted(f"img{i}.jpg" for i in (1, 2, 3, 4, 5, 6, 9, 10))
    measured_on = evalset.file_names(sorted(split.glob("val-*.tfrecord")))
    assert measured_on == ["img7.jpg", "img8.jpg"]  # the frozen set, not img9, img10
    metrics = json.loads(trained["storage"].get(f"{NS}/models/{NAME}/2/metrics.json"))
    assert metrics["val_images"] == 2 and metrics["evaluation"]["set"] == "job-1"
    # the plan counted the images it trained on
    assert manifest(trained, 2)["plan"]


def test_the_gate_promoted_the_first_and_decided_the_second_on_the_same_set(trained):
    state = promotion.read(trained["storage"], NS, NAME)
    first, second = state.gate_entry(1), state.gate_entry(2)
    assert first["action"] == "gate-promoted" and "first version" in first["reason"]
    one, two = manifest(trained, 1)["metrics"], manifest(trained, 2)["metrics"]
    expected = promotion.decide(
        promotion.Measured(2, two, "job-1"), promotion.Measured(1, one, "job-1"), 0.02
    )
    assert (second["action"] == "gate-promoted") == expected.promote
    assert second["reason"] == expected.reason
    assert second["compared_with"] == {
        "version": 1,
        "mAP@0.5": one["mAP@0.5"],
        "evaluation_set": "job-1",
    }


def test_a_version_not_measured_on_the_set_is_refused_and_the_promoted_keeps_serving(trained):
    storage = trained["storage"]
    state = promotion.read(storage, NS, NAME)
    refused = state.gate_entry(3)
    assert refused["action"] == "gate-refused"
    assert "not measured on the model's evaluation set" in refused["reason"]
    assert state.promoted in (1, 2) and state.serving_version({1, 2, 3}) == state.promoted
    status, reason = state.status(3)
    assert status == "candidate" and "not measured" in reason
    final = trained["contexts"]["job-3"]
    assert trained["outcomes"]["job-3"].final_message.endswith(
        "a candidate, not promoted: " + refused["reason"]
    )
    assert final.log.lines  # the gate's decision was logged
    assert any(e == "promotion gate" and not f["promoted"] for _, e, f in final.log.lines)
    decisions = "preannotate_trainer_promotion_decisions_total"
    assert REGISTRY.get_sample_value(decisions, {"decision": "refused"}) >= 1
    assert REGISTRY.get_sample_value(decisions, {"decision": "promoted"}) >= 1
