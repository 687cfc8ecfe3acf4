"""frcnn-res50-coco and maskrcnn run a few steps on the CPU and write a checkpoint.

Proposals, sampled ROIs and masks are cut (arguments the user may set too) so a
step takes about a second at 128 px.
"""

from __future__ import annotations

import asyncio

import pytest

from preannotate.storage import read_manifest
from services.trainer.handlers import handle_dataset_exported
from tests.fakes import FakeContext
from tests.trainer.datasets import write_dataset

#: Trains or builds real TensorFlow models: left out of `make test-fast`.
pytestmark = pytest.mark.tf

LIGHT = (
    "input_size=128;first_stage_max_proposals=64;second_stage_batch_size=32;warmup_steps=0;"
    "pretrained=false"
)


def test_faster_rcnn_trains_and_checkpoints(storage, make_settings):
    data = write_dataset(storage, train_images=2, val_images=1)
    msg = data.event(
        "frcnn-res50-coco", "epochs=2;batch_size=1;eval=false;" + LIGHT, model_name="frcnn"
    )
    ctx = FakeContext(storage)
    outcome = asyncio.run(handle_dataset_exported(msg, ctx, settings=make_settings()))
    event = outcome.emits[0].message
    assert event.steps == 2 and event.model_type == "frcnn-res50-coco"
    assert storage.exists(event.checkpoint + ".index")
    assert ctx.progress_steps() == [1, 2]
    manifest = read_manifest(storage, event.model_prefix)
    assert manifest["family"] == "fasterrcnn" and manifest["backbone"] == "resnet50"


def test_mask_rcnn_trains_in_three_stages(storage, make_settings):
    data = write_dataset(storage, train_images=2, val_images=1, masks=True)
    args = "--stage1_epochs=1;--stage2_epochs=1;--stage3_epochs=1;batch_size=2;"
    msg = data.event("maskrcnn", args + LIGHT + ";num_sampled_masks=8", model_name="masks")
    ctx = FakeContext(storage)
    outcome = asyncio.run(handle_dataset_exported(msg, ctx, settings=make_settings()))
    event = outcome.emits[0].message
    assert event.steps == 3  # one pass of 2 images at 2 per step, per stage
    assert storage.exists(event.checkpoint + ".index")
    stages = [r["details"].get("stage") for r in ctx.reports if r.get("progress")]
    assert stages == ["1/3", "2/3", "3/3"]
    details = ctx.details()
    assert details["epochs"] == "3 (stages over 2 images)"
    assert "1: heads 1 epochs = 1 steps" in details["stages"]
    assert {"mAP", "mAP@0.5", "mask_mAP", "mask_mAP@0.5"} <= set(event.metrics)
    lrs = [r["progress"].learning_rate for r in ctx.reports if r.get("progress")]
    assert lrs[2] < lrs[0]  # the last stage at a tenth of the learning rate
