"""The quickstart's loop: the five services in one process, driven by two events.

1. ``task.annotated`` for the made-up training set (a CVAT "COCO 1.0" export
   read from a local file) → export → training → conversion;
2. ``annotation.requested`` for the held-out images (a local folder laid out
   as a CVAT COCO export) → pre-annotation, written as a CVAT-importable
   ``annotations/instances_default.json``.

Each stage shows a progress bar fed by the job status view (plain lines where
stdout is not a terminal: ``preannotate.cli.display``). With a CVAT URL, the
same loop runs on real CVAT tasks instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from preannotate import events, topics
from preannotate.cli import display
from preannotate.errors import FailedPrecondition
from preannotate.status import TERMINAL, stage_name, state_name
from preannotate.v1 import common_pb2, events_pb2

STAGE_TITLES = {
    events_pb2.JOB_STAGE_REQUESTED: "requested",
    events_pb2.JOB_STAGE_EXPORT: "export",
    events_pb2.JOB_STAGE_TRAIN: "train",
    events_pb2.JOB_STAGE_CONVERT: "convert",
    events_pb2.JOB_STAGE_ANNOTATE: "pre-annotate",
}


@dataclass
class Loop:
    """What one run of the loop needs to know."""

    namespace: str
    model_name: str
    model_type: str
    arguments: str
    train_source: common_pb2.CvatRef
    annotate_target: common_pb2.CvatRef
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)


def _note(status: events_pb2.JobStatus, width: int = 60) -> str:
    """The figures of a stage with steps (loss, speed), else its message (``width`` chars)."""
    p = status.progress
    bits = []
    if p.total and p.loss:
        bits.append(f"loss {p.loss:.3f}")
    if p.total and p.images_per_second:
        bits.append(f"{p.images_per_second:.1f} img/s")
    return ", ".join(bits) or status.message[:width]


def _line(title: str, status: events_pb2.JobStatus) -> str:
    """A plain progress line: ``model train: running, step 300/600, loss 0.410, 5.1 img/s``."""
    name = STAGE_TITLES.get(status.stage, stage_name(status.stage))
    text = f"{title} {name}: {state_name(status.state)}"
    if status.progress.total:
        text += f", step {status.progress.step}/{status.progress.total}"
    note = _note(status, width=300)  # a log line is not a bar's column
    return f"{text}, {note}" if note else text


async def follow(
    runtime,
    job_id: str,
    console: Console,
    title: str,
    *,
    progress: str = "",
    lines: display.Lines | None = None,
) -> events_pb2.JobStatus:
    """Show the job's stages as progress bars (or ``lines``) until it ends; returns its
    last status. ``progress``: bar, plain or none (``preannotate.cli.display.choose``)."""
    mode = display.choose(console, progress)
    if lines is None:
        lines = display.Lines.for_mode(console, mode)
    columns = (
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    bar_view = Progress(*columns, console=console, transient=False, disable=mode != "bar")
    async with lines.beating():
        with bar_view as bar:
            last = await _show(runtime.status_view, job_id, title, bar, lines)
    assert last is not None
    return last


async def _show(
    view, job_id: str, title: str, bar: Progress, lines: display.Lines
) -> events_pb2.JobStatus | None:
    """Feed the job's statuses to a bar per stage and to ``lines``, until it ends."""
    bars: dict[int, int] = {}
    last = None
    async for status in view.watch(job_id):
        last = status
        lines.show(_line(title, status), key=f"{title} {status.stage}:{status.state}")
        stage = status.stage
        if stage not in bars:
            for task in bars.values():  # the earlier stages are done
                if not bar.tasks[task].finished:
                    total = bar.tasks[task].total or 1
                    bar.update(task, completed=total, total=total, note="done")
                    bar.stop_task(task)
            name = STAGE_TITLES.get(stage, stage_name(stage))
            bars[stage] = bar.add_task(f"{title} {name}", total=None, note="")
        p = status.progress
        note = _note(status)
        if p.total:
            bar.update(bars[stage], completed=p.step, total=p.total, note=note)
        else:
            bar.update(bars[stage], note=note)
        if status.state in TERMINAL:
            task = bars[stage]
            total = bar.tasks[task].total or 1
            if status.state == events_pb2.JOB_STATE_SUCCEEDED:
                bar.update(task, completed=total, total=total)
            break
    return last


async def run_loop(
    runtime, loop: Loop, console: Console, timeout: float, *, progress: str = ""
) -> dict:
    """Train, convert and pre-annotate; returns what the events said (``progress``: how
    the stages are shown, see ``follow``)."""
    mode = display.choose(console, progress)
    lines = display.Lines.for_mode(console, mode)  # one clock: time since the loop began
    bus = runtime.bus
    train_job = f"qs-train-{uuid.uuid4().hex[:8]}"
    request = events_pb2.TaskAnnotated(
        job_id=train_job,
        namespace=loop.namespace,
        cvat=loop.train_source,
        trigger="quickstart",
        requested_by="quickstart",
    )
    request.training.model_type = loop.model_type
    request.training.arguments = loop.arguments
    request.training.model_name = loop.model_name
    request.requested_at.GetCurrentTime()

    converted = bus.consumer([topics.MODEL_CONVERTED], None, from_beginning=False)
    done = bus.consumer([topics.TASK_PREANNOTATED], None, from_beginning=False)
    await converted.start()
    await done.start()
    try:
        t0 = time.monotonic()
        await events.publish(bus, topics.TASK_ANNOTATED, request, source="quickstart")
        status = await asyncio.wait_for(
            follow(runtime, train_job, console, "model", progress=mode, lines=lines), timeout
        )
        if status.state != events_pb2.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"training job {train_job} ended {events_pb2.JobState.Name(status.state)} at "
                f"{stage_name(status.stage)}: {status.message}"
            )
        model_event = await _first(converted, train_job, timeout=60)
        loop.timings["train_loop"] = time.monotonic() - t0

        annotate_job = f"qs-annotate-{uuid.uuid4().hex[:8]}"
        ask = events_pb2.AnnotationRequested(
            job_id=annotate_job,
            namespace=loop.namespace,
            cvat=loop.annotate_target,
            model=model_event.model,
            threshold=loop.threshold,
            mode=events_pb2.ANNOTATE_MODE_REPLACE,
            trigger="quickstart",
        )
        t1 = time.monotonic()
        await events.publish(bus, topics.ANNOTATION_REQUESTED, ask, source="quickstart")
        status = await asyncio.wait_for(
            follow(runtime, annotate_job, console, "held-out", progress=mode, lines=lines), timeout
        )
        if status.state != events_pb2.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"pre-annotation job {annotate_job} ended "
                f"{events_pb2.JobState.Name(status.state)}: {status.message}"
            )
        result = await _first(done, annotate_job, timeout=60)
        loop.timings["annotate"] = time.monotonic() - t1
        return {"converted": model_event, "preannotated": result}
    finally:
        for consumer in (converted, done):
            with contextlib.suppress(Exception):
                await consumer.stop()


async def _first(consumer, job_id: str, timeout: float):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for record in await consumer.poll(timeout=0.5):
            if record.key == job_id:
                return events.decode(record)
    raise TimeoutError(f"no event for job {job_id} within {timeout:.0f} s")
