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


class _GatedContext(FakeContext):
    """A context whose status writes wait until ``gate`` is set (a slow or absent bus)."""

    def __init__(self, storage, **kwargs) -> None:
        super().__init__(storage, **kwargs)
        self.gate = asyncio.Event()
        self.started: list[str] = []

    async def report(self, **kwargs):
        self.started.append(kwargs["message"])
        await self.gate.wait()
        await super().report(**kwargs)


async def test_reports_from_a_thread_arrive_in_order_with_stage_and_model():
    ctx = FakeContext(None)
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE, model=MODEL)

    def work() -> None:  # runs in a worker thread, as a training does
        reports.send(message="downloading", details={"model": "team/birds/2"})
        for step in range(1, 21):
            reports.send(message=f"step {step}", progress=events_pb2.Progress(step=step, total=20))

    await asyncio.to_thread(work)
    await reports.settle()
    messages = [r["message"] for r in ctx.reports]
    assert messages[0] == "downloading" and messages[-1] == "step 20"
    steps = ctx.progress_steps()
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # in order, none twice
    assert len(messages) + reports.coalesced == 21
    assert all(r["stage"] == STAGE and r["model"] == MODEL for r in ctx.reports)
    assert ctx.reports[0]["details"] == {"model": "team/birds/2"}
    assert reports.failed == 0 and ctx.log.lines == []


async def test_one_report_in_flight_and_the_newest_waits_behind_it():
    """A slow bus sees one write at a time: the first, then only the newest."""
    ctx = _GatedContext(None)
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE)

    def work() -> None:
        for step in range(1, 1001):
            reports.send(message=f"step {step}", progress=events_pb2.Progress(step=step))

    await asyncio.to_thread(work)
    await asyncio.sleep(0.05)
    assert ctx.started == ["step 1"]  # the others wait; nothing else was started
    ctx.gate.set()
    await reports.settle()
    assert [r["message"] for r in ctx.reports] == ["step 1", "step 1000"]
    assert reports.coalesced == 998


async def test_a_failed_write_is_logged_and_counted_and_the_work_goes_on():
    ctx = _FailingContext(None, service="progress-test")
    before = _failures("progress-test")
    reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE)
    done: list[int] = []

    for step in range(1, 5):
        message = ("fail" if step % 2 else "ok") + f" {step}"
        await asyncio.to_thread(reports.send, message=message)  # does not raise
        done.append(step)
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
    await asyncio.to_thread(reports.send, message="waiting behind it")
    await reports.settle()
    await asyncio.wait_for(ctx.cancelled.wait(), timeout=5)
    assert ("warning", "status reports dropped: still unsent", {"count": 2}) in ctx.log.lines
    assert reports.failed == 0  # dropped, not failed


def test_a_report_that_finishes_before_its_callback_is_added_does_not_block(monkeypatch):
    """The loop can finish a report before ``send`` has added its callback; the callback
    then runs at once, in the sending thread, which holds the lock (a training once hung
    there for good)."""
    import concurrent.futures
    import threading

    from preannotate import progress

    ctx = FakeContext(None)

    def finished_at_once(coroutine, loop):
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_result(asyncio.run(coroutine))
        return future

    monkeypatch.setattr(progress.asyncio, "run_coroutine_threadsafe", finished_at_once)
    reports = ThreadReports(ctx, asyncio.new_event_loop(), stage=STAGE)
    sender = threading.Thread(
        target=lambda: [reports.send(message=f"step {n}") for n in (1, 2, 3)], daemon=True
    )
    sender.start()
    sender.join(timeout=5)
    assert not sender.is_alive(), "send blocked on its own lock"
    assert [r["message"] for r in ctx.reports] == ["step 1", "step 2", "step 3"]
    assert reports.coalesced == 0
