"""A job's default start, through the handler: the installed weights, or a failure before training.

The weights are a real checkpoint (``ssd_run``'s model) put in through the
store's offline import; an unreachable mirror is a local URL nothing listens on.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from preannotate import layout
from preannotate.errors import FailedPrecondition
from preannotate.keys import models_root
from preannotate.storage import read_manifest
from preannotate.weights import WeightsStore
from services.trainer.handlers import handle_dataset_exported
from tests.fakes import FakeContext
from tests.trainer.datasets import write_dataset

SSD = "ssd-mobilenet-v2-coco"
#: No pretrained key: the default start.
TINY = "epochs=2;batch_size=2;input_size=128;warmup_steps=0;eval=false"


def test_missing_weights_fail_the_job_before_training(storage, make_settings, unreachable_mirror):
    data = write_dataset(storage, train_images=2, val_images=1)
    settings = make_settings(weights_mirror=unreachable_mirror, weights_timeout_seconds=5)
    ctx = FakeContext(storage)
    with pytest.raises(FailedPrecondition) as err:
        asyncio.run(handle_dataset_exported(data.event(SSD, TINY), ctx, settings=settings))
    message = str(err.value)
    assert f"`preannotate weights pull {SSD}`" in message
    assert f"`preannotate weights import {SSD} FILE`" in message
    assert "pretrained=false" in message
    assert ctx.progress_steps() == []  # nothing trained
    assert ctx.details()["pretrained"] == "true"
    assert any("starting weights" in r.get("message", "") for r in ctx.reports)
    assert storage.list(models_root("default")) == []  # no model version written
    assert storage.list("weights/") == []  # nothing half-written by the failed fetch


@pytest.mark.tf
def test_the_default_start_is_the_installed_weights_and_says_so(
    ssd_run, storage, make_settings, unreachable_mirror, tmp_path
):
    """Trains 2 steps from weights imported offline; the start is in the job status,
    metrics.json and the manifest. The mirror is unreachable: the installed weights are
    used as they are, never fetched again."""
    source = ssd_run["storage"]
    stored = layout.require_checkpoint(source, ssd_run["outcome"].emits[0].message.checkpoint)
    local = layout.download_checkpoint(source, stored, tmp_path / "download")
    installed = WeightsStore(storage).import_file(SSD, local.with_name(local.name + ".index"))

    data = write_dataset(storage, train_images=2, val_images=1)
    settings = make_settings(weights_mirror=unreachable_mirror, weights_timeout_seconds=5)
    ctx = FakeContext(storage)
    outcome = asyncio.run(handle_dataset_exported(data.event(SSD, TINY), ctx, settings=settings))
    assert ctx.progress_steps() == [1, 2]
    details = ctx.details()
    assert details["init"] == "imagenet-backbone"
    assert details["init_from"] == f"import:{local.name}.index"
    assert details["init_note"] == "backbone restored; decoder and heads start fresh"
    prefix = outcome.emits[0].message.model_prefix
    metrics = json.loads(storage.get(prefix + "metrics.json"))
    assert metrics["init"]["init"] == "imagenet-backbone"
    assert read_manifest(storage, prefix)["init"]["init"] == "imagenet-backbone"
    assert WeightsStore(storage).installed(SSD) == installed  # used, not replaced
