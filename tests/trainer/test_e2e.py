"""The trainer as its own process over the real Kafka broker and moto's S3 server.

A DatasetExported for ssd-mobilenet-v2-coco goes on ``train.jobs.cpu``; a
trainer process (``python -m services.trainer``) takes it and is killed (-9)
once a checkpoint is in S3; a second trainer picks the record up (it was never
committed), resumes from the newest stored checkpoint, and its first step is
the step after it; ``model.trained`` arrives with the checkpoint and metrics.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from preannotate import events, topics
from preannotate.bus import TopicSpec
from preannotate.bus.kafka import KafkaBus
from preannotate.v1 import events_pb2
from services.trainer import checkpoints
from tests.platform.buses import drain, kafka_settings
from tests.platform.stage_process import service_env, stop_processes
from tests.trainer.datasets import write_dataset

pytestmark = [pytest.mark.timeout(420), pytest.mark.tf]

ROOT = Path(__file__).resolve().parents[2]
ARGS = "epochs=24;batch_size=2;input_size=128;checkpoint_every=4;warmup_steps=2;pretrained=false"


class Trainers:
    """Trainer worker processes sharing one topic prefix and one bucket."""

    def __init__(self, bootstrap: str, endpoint: str, bucket: str, tmp: Path) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.env = {
            **service_env(bootstrap, endpoint, bucket, self.prefix),
            "PREANNOTATE_TRAINER_PROGRESS_SECONDS": "0.2",
            "PREANNOTATE_TRAINER_SUMMARY_EVERY": "4",
            "PREANNOTATE_LOG_FORMAT": "console",
        }
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        n = len(self.procs)
        with open(self.tmp / f"trainer-{n}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.trainer"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, "PREANNOTATE_TRAINER_WORK_DIR": str(self.tmp / f"work-{n}")},
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("trainer-*.log"))
        )

    def stop(self) -> None:
        stop_processes(self.procs, grace=30)


async def _wait_for(predicate, timeout: float, what: str, trainers: Trainers) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{trainers.logs()}")
        await asyncio.sleep(0.2)


async def test_killed_trainer_is_replaced_and_the_job_resumes(
    kafka_bootstrap, s3_endpoint, s3_storage, tmp_path
):
    data = write_dataset(s3_storage, job_id="e2e-1", train_images=6, val_images=1)
    msg = data.event("ssd-mobilenet-v2-coco", ARGS, model_name="e2e")
    prefix = "default/models/e2e/1/"
    trainers = Trainers(kafka_bootstrap, s3_endpoint, s3_storage.bucket, tmp_path)
    bus = KafkaBus(kafka_settings(kafka_bootstrap, kafka_topic_prefix=trainers.prefix))
    await bus.start()
    try:
        await bus.ensure_topics(
            [
                TopicSpec(topics.train_jobs("cpu"), 1),
                TopicSpec(topics.MODEL_TRAINED, 1),
                TopicSpec(topics.JOB_STATUS, 1, compacted=True),
            ]
        )
        await events.publish(bus, topics.train_jobs("cpu"), msg, source="test")
        first = trainers.start()
        await _wait_for(
            lambda: checkpoints.latest(s3_storage, prefix) is not None,
            240,
            "a first checkpoint in S3",
            trainers,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = checkpoints.latest(s3_storage, prefix).step
        assert killed_at < 24

        trainers.start()
        reader = bus.consumer([topics.MODEL_TRAINED], None)
        await reader.start()
        try:
            records = await drain(reader, 1, timeout=300)
        finally:
            await reader.stop()
        assert records, f"no model.trained\n{trainers.logs()}"
        trained = events.decode(records[0])
        assert isinstance(trained, events_pb2.ModelTrained)
        assert trained.job_id == msg.job_id and trained.steps == 24
        assert trained.checkpoint == prefix + "checkpoints/ckpt-24/ckpt-24"
        assert s3_storage.exists(trained.checkpoint + ".index")
        assert {"mAP", "mAP@0.5"} <= set(trained.metrics)

        status = bus.consumer([topics.JOB_STATUS], None)
        await status.start()
        try:
            snapshots = [events.decode(r) for r in await drain(status, 10_000, timeout=8)]
        finally:
            await status.stop()
        resumed = [
            s
            for s in snapshots
            if s.job_id == msg.job_id and "resumed_from_step" in s.details and s.progress.step
        ]
        assert resumed, "the second trainer never reported a resumed step"
        assert resumed[0].details["resumed_from_step"] == str(killed_at)
        assert resumed[0].progress.step == killed_at + 1
    finally:
        trainers.stop()
        await bus.stop()
