"""A job whose export cannot be trusted fails with a clear message and leaves nothing to serve."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from preannotate.errors import FailedPrecondition
from preannotate.storage import LocalStorage
from services.converter.handlers import handle_model_trained
from tests.converter.conftest import copy_storage, event_of, settings_for
from tests.fakes import FakeContext

pytestmark = [pytest.mark.tf, pytest.mark.timeout(1800)]


def _run(folder, tmp_path, **overrides):
    storage = copy_storage(folder, tmp_path / "storage")
    msg = event_of(folder)
    settings = settings_for(tmp_path, **overrides)
    ctx = FakeContext(storage)
    with pytest.raises(FailedPrecondition) as failed:
        asyncio.run(handle_model_trained(msg, ctx, settings=settings))
    return storage, ctx, settings, str(failed.value)


def _data_file(storage, msg):
    folder = msg.checkpoint.rsplit("/", 1)[0] + "/"
    (key,) = [k for k in storage.list(folder) if ".data-" in k]
    return storage.root / key


def test_a_corrupted_checkpoint_fails_the_job_and_nothing_lands(ssd_trained, tmp_path):
    source = tmp_path / "trained"
    shutil.copytree(ssd_trained, source)
    path = _data_file(LocalStorage(source / "storage"), event_of(source))
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 4096] = bytes(b ^ 0x5A for b in data[middle : middle + 4096])
    path.write_bytes(bytes(data))

    storage, ctx, settings, message = _run(source, tmp_path / "run")
    assert "checkpoint ckpt-30 cannot be restored into the model" in message
    assert "DataLoss" in message or "checksum" in message.lower()
    assert storage.list("default/serving/") == []
    assert ctx.reports[-1]["message"] == "exporting the SavedModel"
    assert list(settings.convert_work_dir.iterdir()) == []


def test_an_export_that_differs_from_the_checkpoint_is_not_published(ssd_trained, tmp_path):
    # The export and the checkpoint agree to float32 rounding (about 1e-7 on normalised
    # boxes); a tolerance below that makes the real difference fail the check.
    storage, ctx, settings, message = _run(
        ssd_trained, tmp_path / "run", convert_parity_tolerance=1e-12
    )
    assert message.startswith("the exported SavedModel differs from the restored checkpoint")
    assert "tolerance 1e-12" in message and "in its box" in message
    assert "through serving_default" in message or "through serving_image_tensor" in message
    assert storage.list("default/serving/") == []
    assert not any(r["message"].startswith("uploading") for r in ctx.reports)
    assert list(settings.convert_work_dir.iterdir()) == []
