"""One pipeline stage with a small test handler, run by the real runner in its own
process; and ``Pipeline``, which starts such processes for a test.

    python -m tests.platform.stage_process --stage train --bootstrap 127.0.0.1:9092 \
        --prefix t1234. --storage DIR --acts FILE [--slow-job J] [--die-after-publish J] \
        [--long-job J --work-seconds S]

Each handler appends "<stage> <job_id> <pid>" to the acts file when it acts
(the side effect whose count the tests check), then returns the next event.
``--slow-job`` makes the handler sleep so a test can kill the process
mid-record; ``--die-after-publish`` kills the process right after its output
event for that job is published and before the offset is committed (the
window in which a crash causes a duplicate). ``--long-job`` makes the handler
work ``--work-seconds`` for that job, checking ``ctx.stop_requested()`` as a
real long handler does: it appends "<stage> <job_id> <pid> stopped" and raises
``Interrupted`` when asked to stop, or "<stage> <job_id> <pid> done" when its
work is done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from preannotate import topics
from preannotate.bus import TopicSpec
from preannotate.bus.kafka import KafkaBus
from preannotate.errors import Interrupted
from preannotate.handler import Outcome, Route
from preannotate.runner import serve
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings
from preannotate.status import StatusView
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
    p.add_argument("--long-job", default="")
    p.add_argument("--work-seconds", type=float, default=30.0)
    ns = p.parse_args()

    consumed, stage, produced, build = STAGES[ns.stage]

    async def handle(msg, ctx):
        with open(ns.acts, "a") as f:
            f.write(f"{ns.stage} {msg.job_id} {os.getpid()}\n")
        await ctx.report(stage=stage, message=f"{ns.stage} working")
        if msg.job_id == ns.slow_job:
            await asyncio.sleep(60)  # the test kills us here
        if msg.job_id == ns.long_job:
            await work(msg.job_id, ctx)
        return Outcome.emit(produced, build(msg))

    async def work(job_id: str, ctx) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + ns.work_seconds
        while loop.time() < end:
            if ctx.stop_requested():
                with open(ns.acts, "a") as f:
                    f.write(f"{ns.stage} {job_id} {os.getpid()} stopped\n")
                raise Interrupted("asked to stop")
            await asyncio.sleep(0.1)
        with open(ns.acts, "a") as f:
            f.write(f"{ns.stage} {job_id} {os.getpid()} done\n")

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


ROOT = Path(__file__).resolve().parents[2]


class BusSide:
    """The test's own bus and job-status view beside service processes; ``stop()``
    stops the processes."""

    bus: KafkaBus | None = None
    view: StatusView | None = None

    def stop(self) -> None:
        raise NotImplementedError

    async def open(self, settings: ServiceSettings, partitions: int = 2) -> None:
        """Create the topics (as every service does at start) and start the view."""
        self.bus = KafkaBus(settings)
        await self.bus.start()
        await self.bus.ensure_topics(topic_specs(partitions))
        self.view = StatusView(self.bus)
        await self.view.start(wait_caught_up=5)

    async def close(self) -> None:
        self.stop()
        if self.view is not None:
            await self.view.stop()
        if self.bus is not None:
            await self.bus.stop()


class Pipeline(BusSide):
    """Stage processes sharing one topic prefix, storage folder and acts file,
    with a bus and a job-status view on the same topics for the test."""

    def __init__(self, bootstrap: str, tmp: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = f"p{uuid.uuid4().hex[:8]}."
        self.storage = tmp / "storage"
        self.acts = tmp / "acts.log"
        self.logs = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, stage: str, *extra: str) -> subprocess.Popen:
        with open(self.logs / f"{stage}-{len(self.procs)}.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.platform.stage_process",
                    "--stage",
                    stage,
                    "--bootstrap",
                    self.bootstrap,
                    "--prefix",
                    self.prefix,
                    "--storage",
                    str(self.storage),
                    "--acts",
                    str(self.acts),
                    *extra,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs.append(proc)
        return proc

    def lines_of(self, job_id: str) -> list[list[str]]:
        """The acts file's lines about ``job_id``, split into words."""
        if not self.acts.exists():
            return []
        lines = [line.split() for line in self.acts.read_text().splitlines()]
        return [words for words in lines if words[1] == job_id]

    def acts_of(self, job_id: str) -> list[str]:
        """The stages that acted on ``job_id`` (one per handler call), in order."""
        return [words[0] for words in self.lines_of(job_id) if len(words) == 3]

    def stop(self) -> None:
        stop_processes(self.procs)


def service_env(bootstrap: str, endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    """The environment of a service process on the test broker and S3 server."""
    from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PREANNOTATE_BUS": "kafka",
        "PREANNOTATE_AUTH": "none",
        "PREANNOTATE_KAFKA_BOOTSTRAP": bootstrap,
        "PREANNOTATE_KAFKA_TOPIC_PREFIX": prefix,
        "PREANNOTATE_KAFKA_PARTITIONS": "1",
        "PREANNOTATE_SESSION_TIMEOUT_MS": "6000",
        "PREANNOTATE_KEEPALIVE_SECONDS": "0.5",
        "PREANNOTATE_STORAGE": "s3",
        "PREANNOTATE_S3_ENDPOINT": endpoint,
        "PREANNOTATE_S3_BUCKET": bucket,
        "PREANNOTATE_S3_REGION": S3_REGION,
        "PREANNOTATE_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "PREANNOTATE_S3_SECRET_KEY": S3_SECRET_KEY,
        "PREANNOTATE_MACHINE_TYPES": "cpu=0",
        "PREANNOTATE_MACHINE_TYPE": "cpu",
    }


def stop_processes(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGTERM every process still running, then kill those not gone after ``grace``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


def topic_specs(partitions: int) -> list[TopicSpec]:
    out = []
    for name in topics.all_topics(["cpu"]):
        out.append(TopicSpec(name, partitions, compacted=name in topics.COMPACTED))
        out.append(TopicSpec(name + ".dlq", partitions))
    return out


async def wait_for(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    main()
