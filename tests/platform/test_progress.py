"""ThreadReports: reports from a worker thread reach ctx.report; a failed write stops nothing."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from preannotate.errors import Unavailable
from preannotate.progress import ThreadReports
from preannotate.v1 import common_pb2, events_pb2
from tests.fakes import FakeContext

STAGE = events_pb2.JOB_STAGE_TRAIN
MODEL = common_pb2.ModelRef(namespace="team", name="birds", version=2)


class _FailingContext(FakeContext):
    """A context whose status writes fail for messages that start with ``fail``."""

    async def report(self, **kwargs):
        if kwargs["message"].startswith("fail"):
            raise Unavailable("job.status: the broker is down")
        await super().report(**kwargs)


class _HangingContext(FakeContext):
    def __init__(self, storage) -> None:
        super().__init__(storage)
        self.cancelled = asyncio.Event()

    async def report(self, **kwargs):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def _failures(service: str) -> float:
    value = REGISTRY.get_sample_value(
        "preannotate_status_reports_failed_total", {"service": service}
    )
    return value or 0.0


async def test_reports_from_a_thread_arrive_in_order_with_stage_and_model():
    ctx = FakeContext(None)
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE, model=MODEL)

    def work() -> None:  # runs in a worker thread, as a training does
        reports.send(message="downloading", details={"model": "team/birds/2"})
        for step in (1, 2):
            reports.send(message=f"step {step}", progress=events_pb2.Progress(step=step, total=2))

    await asyncio.to_thread(work)
    await reports.settle()
    assert [r["message"] for r in ctx.reports] == ["downloading", "step 1", "step 2"]
    assert all(r["stage"] == STAGE and r["model"] == MODEL for r in ctx.reports)
    assert ctx.reports[0]["details"] == {"model": "team/birds/2"}
    assert ctx.progress_steps() == [1, 2]
    assert reports.failed == 0 and ctx.log.lines == []


async def test_a_failed_write_is_logged_and_counted_and_the_work_goes_on():
    ctx = _FailingContext(None, service="progress-test")
    before = _failures("progress-test")
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE)
    done: list[int] = []

    def work() -> None:
        for step in range(1, 5):
            reports.send(message=("fail" if step % 2 else "ok") + f" {step}")
            done.append(step)

    await asyncio.to_thread(work)  # does not raise
    await reports.settle()  # nor does this
    assert done == [1, 2, 3, 4]
    assert [r["message"] for r in ctx.reports] == ["ok 2", "ok 4"]
    assert reports.failed == 2
    assert _failures("progress-test") == before + 2
    warnings = [(event, f) for level, event, f in ctx.log.lines if level == "warning"]
    assert [event for event, _ in warnings] == ["status report failed"] * 2
    assert "Unavailable: job.status: the broker is down" in warnings[0][1]["error"]


async def test_settle_waits_a_bounded_time_then_drops_what_is_unsent():
    ctx = _HangingContext(None)
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE, settle_seconds=0.05)
    await asyncio.to_thread(reports.send, message="never written")
    await reports.settle()
    await asyncio.wait_for(ctx.cancelled.wait(), timeout=5)
    assert ("warning", "status reports dropped: still unsent", {"count": 1}) in ctx.log.lines
    assert reports.failed == 0  # dropped, not failed
