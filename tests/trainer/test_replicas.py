"""num_clones > 1: the replicated training step (MirroredStrategy), checked on the CPU.

Without GPUs here, a child process splits its CPU into two logical devices and
trains ssd-mobilenet-v2-coco with ``num_clones=2`` on a pool whose machine type
says two devices: the same strategy, input distribution and loss reduction as
on two GPUs. (The figures on real GPUs need a GPU machine; see docs/benchmarks.md.)
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from preannotate.errors import FailedPrecondition

pytestmark = [pytest.mark.timeout(600), pytest.mark.tf]

ARGS = (
    "epochs=4;batch_size=4;num_clones=2;input_size=128;checkpoint_every=2;warmup_steps=1;"
    "pretrained=false"
)


def _child(root: str) -> None:
    """Run in the child: two logical CPUs, one job, a JSON line of what it did."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from preannotate.storage import LocalStorage
    from services.trainer.handlers import handle_dataset_exported
    from services.trainer.settings import TrainerSettings
    from tests.fakes import FakeContext
    from tests.trainer.datasets import write_dataset

    storage = LocalStorage(Path(root) / "storage")
    settings = TrainerSettings(
        storage="local",
        storage_root=Path(root) / "storage",
        machine_types="cpu=0,cpu2=2",
        machine_type="cpu2",
        trainer_work_dir=Path(root) / "work",
        trainer_progress_seconds=0.001,
        trainer_norm_batches=2,  # the recompute runs over both replicas; more batches add only time
    )
    data = write_dataset(storage, train_images=8, val_images=2, size=96)
    msg = data.event("ssd-mobilenet-v2-coco", ARGS, model_name="pair")
    ctx = FakeContext(storage)
    outcome = asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))
    event = outcome.emits[0].message
    progress = [r["progress"] for r in ctx.reports if r.get("progress") is not None]
    print(
        json.dumps(
            {
                "details": ctx.details(),
                "steps": event.steps,
                "checkpoint": event.checkpoint,
                "metrics": dict(event.metrics),
                "steps_seen": [p.step for p in progress],
                "losses": [p.loss for p in progress],
            }
        )
    )


def test_two_replicas_train_and_checkpoint(tmp_path):
    code = f"from tests.trainer.test_replicas import _child; _child({str(tmp_path)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    devices = result["details"]["devices"].split(",")
    assert len(devices) == 2 and all("CPU" in d for d in devices) and devices[0] != devices[1]
    assert result["details"]["num_clones"] == "2"
    assert result["details"]["batchnorm"].endswith("averages from 2 training batches")
    assert result["steps"] == 4 and result["checkpoint"].endswith("checkpoints/ckpt-4/ckpt-4")
    assert result["steps_seen"] == [1, 2, 3, 4]
    assert result["losses"] and all(math.isfinite(v) for v in result["losses"])
    assert {"mAP", "mAP@0.5"} <= set(result["metrics"])


def test_more_clones_than_devices_is_refused():
    from services.trainer.training import make_strategy

    with pytest.raises(FailedPrecondition, match="num_clones=2, and this trainer sees no GPU"):
        make_strategy(2)
    assert make_strategy(1).num_replicas_in_sync == 1
