"""A cancel ends the wait on ``Unavailable``: a record retried because a dependency
is down stops waiting when its job is cancelled, and ends CANCELLED (not in the
DLQ, not retried until ``retry_deadline_seconds``), on both buses."""

from __future__ import annotations

import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.errors import Unavailable
from preannotate.handler import Route
from preannotate.runner import Runtime
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings
from preannotate.status import StatusWriter
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2
from tests.platform.buses import drain, kafka_settings
from tests.platform.test_runner import task_annotated, until

pytestmark = pytest.mark.timeout(180)

#: The wait between two tries (capped at 30 s) and the deadline are far longer
#: than the test waits for the job to end: only the cancel can end the wait.
BACKOFF = 60.0
DEADLINE = 3600.0


@pytest.mark.parametrize("kind", ["memory", "kafka"])
async def test_a_cancel_ends_the_wait_on_unavailable_and_the_job_ends_cancelled(
    kind, request, tmp_path
):
    tries: list[str] = []

    async def down(msg, ctx):
        tries.append(msg.job_id)
        await ctx.report(stage=events_pb2.JOB_STAGE_EXPORT, message="asking CVAT")
        raise Unavailable("CVAT answered 503")

    spec = ServiceSpec(
        name="probe",
        routes=[Route(topics.TASK_ANNOTATED, down, stage=events_pb2.JOB_STAGE_EXPORT)],
    )
    common = {
        "retry_backoff_seconds": BACKOFF,
        "retry_deadline_seconds": DEADLINE,
        "machine_types": "cpu=0",
    }
    if kind == "memory":
        settings = ServiceSettings(bus="memory", keepalive_seconds=0.5, **common)
        bus = MemoryBus()
    else:
        settings = kafka_settings(request.getfixturevalue("kafka_bootstrap")).model_copy(
            update=common
        )
        bus = None
    rt = Runtime([(spec, settings)], bus=bus, storage=LocalStorage(tmp_path / "store"))
    if bus is not None:
        await bus.start()
    await rt.start()
    try:
        await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated("job-c"), source="t")
        await until(lambda: tries == ["job-c"], 60)
        await until(lambda: rt.status_view.get("job-c") is not None)  # its RUNNING status
        # what the gateway's CancelJob writes: the job's status, now CANCELLING
        cancel = events_pb2.JobStatus()
        cancel.CopyFrom(rt.status_view.get("job-c"))
        cancel.state = events_pb2.JOB_STATE_CANCELLING
        cancel.message = "cancel requested by test"
        await StatusWriter(rt.bus, "gateway").write(cancel)
        await until(
            lambda: rt.status_view.get("job-c").state == events_pb2.JOB_STATE_CANCELLED,
            20,  # well inside the 30 s wait the worker is in
        )
        assert tries == ["job-c"], "tried again after the cancel"
        reader = rt.bus.consumer([topics.TASK_ANNOTATED + ".dlq"], None)
        await reader.start()
        try:
            assert await drain(reader, 1, timeout=2) == [], "a cancelled record went to the DLQ"
        finally:
            await reader.stop()
        assert "cancel" in rt.status_view.get("job-c").message
    finally:
        await rt.stop()
        if bus is not None:
            await rt.bus.stop()
