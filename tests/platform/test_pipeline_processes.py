"""The runner end to end: one process per stage, the real broker, kills and restarts."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from preannotate import events, topics
from preannotate.v1 import events_pb2
from tests.platform.buses import drain
from tests.platform.stage_process import Pipeline, wait_for

pytestmark = pytest.mark.timeout(240)


def request(job_id: str) -> events_pb2.TaskAnnotated:
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a", trigger="test")
    msg.cvat.task_id = 12
    return msg


async def preannotated(p: Pipeline, job_id: str, n: int = 1, timeout: float = 60):
    reader = p.bus.consumer([topics.TASK_PREANNOTATED], None)
    await reader.start()
    try:
        got: list = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            got += [r for r in await drain(reader, 1, 1.0) if r.key == job_id]
            if len(got) >= n:
                break
        return got
    finally:
        await reader.stop()


async def test_an_event_travels_through_four_processes_and_survives_a_kill(pipeline):
    p = pipeline
    job = f"job-{uuid.uuid4().hex[:6]}"
    p.start("export")
    slow = p.start("train", "--slow-job", job)
    p.start("convert")
    p.start("annotate")
    await events.publish(p.bus, topics.TASK_ANNOTATED, request(job), source="test")

    await wait_for(lambda: "train" in p.acts_of(job), 60, "train to start")
    await wait_for(
        lambda: (
            (s := p.view.get(job)) is not None
            and s.stage == events_pb2.JOB_STAGE_TRAIN
            and s.state == events_pb2.JOB_STATE_RUNNING
        ),
        30,
        "job.status to say TRAIN running",
    )
    slow.kill()  # mid-record: nothing committed
    slow.wait(10)
    p.start("train")  # a new worker, no slow job this time

    out = await preannotated(p, job)
    assert [events.decode(r).job_id for r in out] == [job]
    await wait_for(lambda: p.view.get(job).state == events_pb2.JOB_STATE_SUCCEEDED, 30, "SUCCEEDED")
    assert p.view.get(job).stage == events_pb2.JOB_STAGE_ANNOTATE
    assert p.acts_of(job) == ["export", "train", "train", "convert", "annotate"]


async def test_a_duplicate_caused_by_a_crash_after_publish_is_acted_on_once(pipeline):
    p = pipeline
    job = f"job-{uuid.uuid4().hex[:6]}"
    p.start("export")
    p.start("train")
    crashing = p.start("convert", "--die-after-publish", job)
    p.start("annotate")
    await events.publish(p.bus, topics.TASK_ANNOTATED, request(job), source="test")

    assert crashing.wait(60) == 17, "convert should die right after publishing"
    p.start("convert")  # the record comes back: it was never committed
    first = await preannotated(p, job, n=2)
    assert len(first) == 2, "the re-published model.converted reaches annotate again"
    assert first[0].event_id == first[1].event_id, "the duplicate keeps its event id"
    await wait_for(lambda: p.acts_of(job).count("convert") == 1, 5, "convert acts")
    assert p.acts_of(job) == ["export", "train", "convert", "annotate"]
