"""A worker joins the group while a long record runs: the record runs to completion
once and its output is published once, on the real broker with real processes.

Whether the record's partition moves to the newcomer is up to the group's
assignor; either way the record completes once (the first worker is stopped
at its next safe point when its partition goes) and nothing is published twice
(a partition that stays is not fetched again). ``run_trial`` is also what
bench-style loops over many trials call.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest

from preannotate import events, topics
from preannotate.v1 import events_pb2
from tests.platform.buses import drain
from tests.platform.stage_process import Pipeline, wait_for

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Trial:
    """What happened to one long record: the pids that started, stopped and
    completed it, and how many times its output was published."""

    started: list[str]
    stopped: list[str]
    done: list[str]
    published: int

    @property
    def moved(self) -> bool:
        return len(set(self.started)) > 1

    @property
    def ran_twice(self) -> bool:
        """Run by two workers without the first being stopped, completed twice,
        or published twice."""
        return len(self.started) - len(self.stopped) > 1 or len(self.done) > 1 or self.published > 1


def dataset_exported(job_id: str) -> events_pb2.DatasetExported:
    msg = events_pb2.DatasetExported(job_id=job_id, namespace="team-a", dataset_prefix="d/")
    msg.cvat.task_id = 12
    return msg


async def run_trial(p: Pipeline, work_seconds: float = 20.0, join_after: float = 3.0) -> Trial:
    """One train process works on one long record; a second joins the group
    ``join_after`` seconds in; wait until the record is done and its output out."""
    job = f"job-{uuid.uuid4().hex[:6]}"
    args = ("--long-job", job, "--work-seconds", str(work_seconds))
    p.start("train", *args)
    assert p.bus is not None
    await events.publish(p.bus, topics.train_jobs("cpu"), dataset_exported(job), source="test")
    await wait_for(lambda: p.lines_of(job), 60, "the first worker to start the record")
    await asyncio.sleep(join_after)
    p.start("train", *args)
    await wait_for(
        lambda: any(w[3:] == ["done"] for w in p.lines_of(job)),
        3 * work_seconds + 60,
        "the record to be done",
    )
    reader = p.bus.consumer([topics.MODEL_TRAINED], None)
    await reader.start()
    try:
        out = [r for r in await drain(reader, 2, timeout=8.0) if r.key == job]
    finally:
        await reader.stop()
    lines = p.lines_of(job)
    return Trial(
        started=[w[2] for w in lines if len(w) == 3],
        stopped=[w[2] for w in lines if w[3:] == ["stopped"]],
        done=[w[2] for w in lines if w[3:] == ["done"]],
        published=len(out),
    )


async def test_a_worker_joining_mid_record_does_not_make_it_run_or_publish_twice(pipeline):
    trial = await run_trial(pipeline)
    assert len(trial.done) == 1, f"completed {len(trial.done)} times: {trial}"
    assert trial.published == 1, f"output published {trial.published} times: {trial}"
    # a worker that started the record and did not complete it was stopped
    assert sorted(trial.started) == sorted(trial.done + trial.stopped), trial
    assert len(trial.started) <= 2, trial
