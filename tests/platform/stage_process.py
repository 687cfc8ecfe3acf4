"""One pipeline stage with a small test handler, run by the real runner in its own process.

    python -m tests.platform.stage_process --stage train --bootstrap 127.0.0.1:9092 \
        --prefix t1234. --storage DIR --acts FILE [--slow-job J] [--die-after-publish J]

Each handler appends "<stage> <job_id> <pid>" to the acts file when it acts
(the side effect whose count the tests check), then returns the next event.
``--slow-job`` makes the handler sleep so a test can kill the process
mid-record; ``--die-after-publish`` kills the process right after its output
event for that job is published and before the offset is committed (the
window in which a crash causes a duplicate).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from preannotate import topics
from preannotate.bus.kafka import KafkaBus
from preannotate.handler import Outcome, Route
from preannotate.runner import serve
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings
from preannotate.storage import LocalStorage
from preannotate.telemetry.logging import configure
from preannotate.v1 import common_pb2, events_pb2

STAGES = {
    # stage: (consumed topic, job stage, produced topic, build the output)
    "export": (
        topics.TASK_ANNOTATED,
        events_pb2.JOB_STAGE_EXPORT,
        topics.train_jobs("cpu"),
        lambda m: events_pb2.DatasetExported(
            job_id=m.job_id, namespace=m.namespace, dataset_prefix="d/", cvat=m.cvat
        ),
    ),
    "train": (
        topics.train_jobs("cpu"),
        events_pb2.JOB_STAGE_TRAIN,
        topics.MODEL_TRAINED,
        lambda m: events_pb2.ModelTrained(
            job_id=m.job_id,
            namespace=m.namespace,
            model=common_pb2.ModelRef(namespace=m.namespace, name="m", version=1),
            cvat=m.cvat,
        ),
    ),
    "convert": (
        topics.MODEL_TRAINED,
        events_pb2.JOB_STAGE_CONVERT,
        topics.MODEL_CONVERTED,
        lambda m: events_pb2.ModelConverted(
            job_id=m.job_id, namespace=m.namespace, model=m.model, cvat=m.cvat
        ),
    ),
    "annotate": (
        topics.MODEL_CONVERTED,
        events_pb2.JOB_STAGE_ANNOTATE,
        topics.TASK_PREANNOTATED,
        lambda m: events_pb2.TaskPreannotated(
            job_id=m.job_id, namespace=m.namespace, model=m.model, cvat=m.cvat, frames_done=1
        ),
    ),
}


class CrashingBus(KafkaBus):
    """A KafkaBus that kills the process after publishing one chosen job's output."""

    def __init__(self, settings, topic: str, job_id: str) -> None:
        super().__init__(settings)
        self.crash_topic = topic
        self.crash_key = job_id

    async def send(self, topic, value, *, key, headers=None):
        result = await super().send(topic, value, key=key, headers=headers)
        if topic == self.crash_topic and key == self.crash_key:
            os._exit(17)  # after publish, before commit
        return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", choices=sorted(STAGES), required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--storage", required=True)
    p.add_argument("--acts", required=True)
    p.add_argument("--slow-job", default="")
    p.add_argument("--die-after-publish", default="")
    ns = p.parse_args()

    consumed, stage, produced, build = STAGES[ns.stage]

    async def handle(msg, ctx):
        with open(ns.acts, "a") as f:
            f.write(f"{ns.stage} {msg.job_id} {os.getpid()}\n")
        await ctx.report(stage=stage, message=f"{ns.stage} working")
        if msg.job_id == ns.slow_job:
            await asyncio.sleep(60)  # the test kills us here
        return Outcome.emit(produced, build(msg))

    settings = ServiceSettings(
        bus="kafka",
        kafka_bootstrap=ns.bootstrap,
        kafka_topic_prefix=ns.prefix,
        session_timeout_ms=6000,
        keepalive_seconds=0.5,
        storage="local",
        storage_root=ns.storage,
        log_format="json",
    )
    spec = ServiceSpec(name=ns.stage, routes=[Route(consumed, handle, stage=stage)])
    bus = CrashingBus(settings, produced, ns.die_after_publish) if ns.die_after_publish else None
    configure(ns.stage, "info", "json")

    async def run() -> None:
        if bus is not None:
            await bus.start()
        try:
            await serve([(spec, settings)], bus=bus, storage=LocalStorage(ns.storage))
        finally:
            if bus is not None:
                await bus.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
