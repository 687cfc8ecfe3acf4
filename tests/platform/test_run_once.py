"""``PREANNOTATE_MAX_RECORDS`` / ``preannotate run <service> --once`` on the real broker:
a worker takes up one record, settles it, and exits 0; the next record waits for
the next worker (one Kubernetes Job per training)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from preannotate import events, topics
from preannotate.bus import TopicSpec, dlq_topic
from preannotate.bus.kafka import KafkaBus
from preannotate.errors import Interrupted
from preannotate.handler import Outcome, Route
from preannotate.runner import Runtime, serve
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings, SettingsError
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2
from tests.platform.buses import drain, kafka_settings

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
GROUP = "preannotate-probe"


def task_annotated(job_id: str) -> events_pb2.TaskAnnotated:
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a", trigger="test")
    msg.cvat.task_id = 7
    return msg


def probe_spec(seen: list[str], hold: set[str] | None = None) -> ServiceSpec:
    """A service of one route that records each job it is given; a job in ``hold``
    runs until the process is asked to stop."""

    async def handle(msg, ctx):
        seen.append(msg.job_id)
        while hold and msg.job_id in hold:
            if ctx.stop_requested():
                raise Interrupted("asked to stop")
            await asyncio.sleep(0.05)
        return Outcome.nothing()

    return ServiceSpec(
        name="probe",
        routes=[Route(topics.TASK_ANNOTATED, handle, stage=events_pb2.JOB_STAGE_EXPORT)],
    )


@pytest.fixture
async def side(kafka_bootstrap):
    """The test's bus on a fresh prefix: one partition per topic, so offsets are 0, 1, ..."""
    settings = kafka_settings(kafka_bootstrap, kafka_partitions=1, machine_types="cpu=0")
    bus = KafkaBus(settings)
    await bus.start()
    names = [topics.TASK_ANNOTATED, topics.train_jobs("cpu"), topics.JOB_STATUS]
    await bus.ensure_topics(
        [TopicSpec(n, 1, compacted=n in topics.COMPACTED) for n in names]
        + [TopicSpec(dlq_topic(n), 1) for n in names]
    )
    bus.test_settings = settings
    yield bus
    await bus.stop()


async def committed(bus: KafkaBus, group: str, topic: str) -> dict[int, int]:
    return {p: offset for p, (offset, _) in (await bus.committed(group, topic)).items()}


async def test_a_once_worker_handles_one_of_two_records_then_returns(side, tmp_path):
    first, second = (f"job-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for job in (first, second):
        await events.publish(side, topics.TASK_ANNOTATED, task_annotated(job), source="test")
    settings = side.test_settings.model_copy(update={"max_records": 1})
    storage = LocalStorage(tmp_path / "store")
    seen: list[str] = []

    # never told to stop: it returns because its record budget is spent
    await asyncio.wait_for(
        serve([(probe_spec(seen), settings)], storage=storage, stop=asyncio.Event()), 90
    )
    assert seen == [first]
    assert await committed(side, GROUP, topics.TASK_ANNOTATED) == {0: 1}

    # the second record waited for the next worker
    await asyncio.wait_for(
        serve([(probe_spec(seen), settings)], storage=storage, stop=asyncio.Event()), 90
    )
    assert seen == [first, second]
    assert await committed(side, GROUP, topics.TASK_ANNOTATED) == {0: 2}


async def test_a_once_worker_stopped_mid_record_leaves_it_for_the_next(side, tmp_path):
    job = f"job-{uuid.uuid4().hex[:6]}"
    await events.publish(side, topics.TASK_ANNOTATED, task_annotated(job), source="test")
    settings = side.test_settings.model_copy(update={"max_records": 1})
    storage = LocalStorage(tmp_path / "store")
    seen: list[str] = []
    stop = asyncio.Event()
    run = asyncio.create_task(
        serve([(probe_spec(seen, hold={job}), settings)], storage=storage, stop=stop)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not seen and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert seen == [job]
    stop.set()  # SIGTERM
    await asyncio.wait_for(run, 60)
    assert await committed(side, GROUP, topics.TASK_ANNOTATED) == {}

    await asyncio.wait_for(
        serve([(probe_spec(seen), settings)], storage=storage, stop=asyncio.Event()), 90
    )
    assert seen == [job, job]
    assert await committed(side, GROUP, topics.TASK_ANNOTATED) == {0: 1}


async def test_a_once_worker_with_nothing_to_take_exits_after_its_wait(side, tmp_path):
    """A Job started for a record another Job took: no record comes, the process ends."""
    settings = side.test_settings.model_copy(
        update={"max_records": 1, "max_records_wait_seconds": 3.0}
    )
    seen: list[str] = []
    storage = LocalStorage(tmp_path / "store")
    await asyncio.wait_for(
        serve([(probe_spec(seen), settings)], storage=storage, stop=asyncio.Event()), 60
    )
    assert seen == []
    # a record queued afterwards is the next worker's
    job = f"job-{uuid.uuid4().hex[:6]}"
    await events.publish(side, topics.TASK_ANNOTATED, task_annotated(job), source="test")
    patient = settings.model_copy(update={"max_records_wait_seconds": 0.0})
    await asyncio.wait_for(
        serve([(probe_spec(seen), patient)], storage=storage, stop=asyncio.Event()), 90
    )
    assert seen == [job]
    assert await committed(side, GROUP, topics.TASK_ANNOTATED) == {0: 1}


def test_a_process_that_consumes_nothing_refuses_a_record_limit():
    spec = ServiceSpec(name="idle", routes=[])
    settings = ServiceSettings(bus="memory", max_records=1)
    with pytest.raises(SettingsError, match=r"PREANNOTATE_MAX_RECORDS=1.*consumes no topic"):
        Runtime([(spec, settings)])


async def test_trainer_once_dead_letters_a_bad_job_and_exits_0_leaving_the_next(side, tmp_path):
    """The real trainer, started as the Job's container is: ``preannotate run trainer --once``."""
    bad, queued = (f"job-{uuid.uuid4().hex[:6]}" for _ in range(2))
    pool = topics.train_jobs("cpu")
    for job, model_type in ((bad, ""), (queued, "ssd-mobilenet-v2-coco")):
        msg = events_pb2.DatasetExported(job_id=job, namespace="team-a", classes=["cat"])
        msg.training.model_type = model_type  # none: refused by the trainer, to the DLQ
        msg.train.images = 4
        await events.publish(side, pool, msg, source="test")
    settings = side.test_settings
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PREANNOTATE_BUS": "kafka",
        "PREANNOTATE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PREANNOTATE_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PREANNOTATE_KAFKA_PARTITIONS": "1",
        "PREANNOTATE_SESSION_TIMEOUT_MS": "6000",
        "PREANNOTATE_STORAGE": "local",
        "PREANNOTATE_STORAGE_ROOT": str(tmp_path / "store"),
        "PREANNOTATE_TRAINER_WORK_DIR": str(tmp_path / "work"),
        "PREANNOTATE_MACHINE_TYPES": "cpu=0",
        "PREANNOTATE_MACHINE_TYPE": "cpu",
    }
    env.pop("PREANNOTATE_MAX_RECORDS", None)
    with open(tmp_path / "trainer.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "preannotate", "run", "trainer", "--once"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            rc = await asyncio.to_thread(proc.wait, 150)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 0, (tmp_path / "trainer.log").read_text()[-3000:]

    assert await committed(side, "preannotate-trainer-cpu", pool) == {0: 1}
    dead = side.consumer([dlq_topic(pool)], None)
    await dead.start()
    try:
        assert [r.key for r in await drain(dead, 1)] == [bad]
    finally:
        await dead.stop()
    # the queued job was never taken up: no status of it, while the bad one FAILED
    status = side.consumer([topics.JOB_STATUS], None)
    await status.start()
    try:
        lines = [events.decode(r) for r in await drain(status, 100, timeout=5.0)]
    finally:
        await status.stop()
    assert {s.job_id for s in lines} == {bad}
    assert lines[-1].state == events_pb2.JOB_STATE_FAILED
