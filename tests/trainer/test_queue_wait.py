"""The time a job waited in its pool's queue: observed when its training starts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from preannotate.bus.base import Record
from preannotate.errors import FailedPrecondition, InvalidArgument
from preannotate.events import headers_for
from services.trainer import metrics
from services.trainer.handlers import handle_dataset_exported
from tests.fakes import FakeContext
from tests.trainer.datasets import write_dataset

TINY = "batch_size=2;input_size=128;warmup_steps=0;eval=false;pretrained=false"
NAME = "preannotate_trainer_queue_wait_seconds"


def _observed(machine_type: str) -> tuple[float, float]:
    """(count, sum) of the histogram's series for ``machine_type``."""
    labels = {"machine_type": machine_type}
    count = REGISTRY.get_sample_value(f"{NAME}_count", labels) or 0.0
    total = REGISTRY.get_sample_value(f"{NAME}_sum", labels) or 0.0
    return count, total


def _bucket(machine_type: str, le: str) -> float:
    labels = {"machine_type": machine_type, "le": le}
    return REGISTRY.get_sample_value(f"{NAME}_bucket", labels) or 0.0


def _context(storage, msg, queued: datetime) -> FakeContext:
    ctx = FakeContext(storage)
    headers = headers_for(msg, source="exporter")
    headers["ce_time"] = queued.isoformat()
    ctx.record = Record("train.jobs.gpu-1", 0, 7, msg.job_id, msg.SerializeToString(), headers)
    return ctx


def test_a_training_that_starts_observes_its_wait_in_the_pool(storage, make_settings):
    """The job was queued two hours ago; its training starts (and stops at once: its
    dataset is unfinished): one observation of about 7200 s for the worker's pool."""
    data = write_dataset(storage, train_images=2, val_images=1)
    storage.delete_prefix(data.prefix)
    msg = data.event("ssd-mobilenet-v2-coco", TINY)
    ctx = _context(storage, msg, datetime.now(UTC) - timedelta(hours=2))
    before = _observed("gpu-1")
    hour, day = _bucket("gpu-1", "3600.0"), _bucket("gpu-1", "86400.0")
    with pytest.raises(FailedPrecondition):
        asyncio.run(handle_dataset_exported(msg, ctx, settings=make_settings(machine_type="gpu-1")))
    count, total = _observed("gpu-1")
    assert count == before[0] + 1
    assert 7200 <= total - before[1] < 7200 + 600
    assert _bucket("gpu-1", "3600.0") == hour  # above an hour,
    assert _bucket("gpu-1", "86400.0") == day + 1  # within the day bucket


def test_a_refused_job_is_not_counted(storage, make_settings):
    """No training starts for an event refused before any work."""
    data = write_dataset(storage, train_images=2, val_images=1)
    msg = data.event("yolo", "")
    ctx = _context(storage, msg, datetime.now(UTC) - timedelta(minutes=5))
    before = _observed("cpu")
    with pytest.raises(InvalidArgument, match="unknown model type"):
        asyncio.run(handle_dataset_exported(msg, ctx, settings=make_settings()))
    assert _observed("cpu") == before


def test_a_record_without_a_readable_time_is_not_counted():
    before = _observed("cpu")
    assert metrics.observe_queue_wait("cpu", {"ce_time": "yesterday"}) is None
    assert metrics.observe_queue_wait("cpu", None) is None
    assert _observed("cpu") == before
    queued = datetime(2026, 1, 1, tzinfo=UTC)
    waited = metrics.observe_queue_wait(
        "cpu", {"ce_time": queued.isoformat()}, now=queued.timestamp() + 90
    )
    assert waited == 90.0
    assert _observed("cpu") == (before[0] + 1, before[1] + 90.0)
