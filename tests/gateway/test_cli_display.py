"""What a person sees from the gateway commands: plain progress lines where stdout
is not a terminal, bars where it is, and ``jobs`` in 80 columns (``--wide``: all)."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
from rich.console import Console

from preannotate.cli import training as cli
from preannotate.quickstart import flow
from preannotate.status import snapshot
from preannotate.v1 import events_pb2
from tests.gateway.test_cli import connection, play

pytestmark = pytest.mark.timeout(60)

ELAPSED = re.compile(r", (\d+ min )?\d+ s elapsed$")


def console(*, terminal: bool = False, width: int = 200) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None)


def text(c: Console) -> str:
    return c.file.getvalue()


async def _train(gw, out: Console, **options) -> tuple[int, str]:
    player = asyncio.create_task(play(gw, events_pb2.JOB_STATE_SUCCEEDED, "model ready"))
    code = await cli.train_async(
        task=12, model="ssd-mobilenet-v2-coco", connection=connection(gw), console=out, **options
    )
    return code, await player


async def test_train_into_a_log_prints_a_line_per_stage_with_its_figures(gateway, monkeypatch):
    monkeypatch.delenv("PREANNOTATE_PROGRESS", raising=False)
    out = console()  # not a terminal: a log file, CI, | tee
    code, job_id = await _train(gateway, out)
    assert code == 0
    lines = text(out).splitlines()
    progress = [line for line in lines if ELAPSED.search(line)]
    assert progress[0].startswith("export: queued - queued: export of CVAT task 12, ")
    assert any(line.startswith("export: running, ") for line in progress), text(out)
    assert any(
        line.startswith("train: running, step 10/30, loss 0.0909, eta 0:05, ") for line in progress
    ), text(out)
    assert progress[-1].startswith("convert: succeeded - model ready, ")
    assert lines[0] == job_id and lines[-1] == f"job {job_id} succeeded; model team-a/birds/1"
    assert "━" not in text(out)  # no bar drawn


async def test_train_on_a_terminal_keeps_its_bar(gateway, monkeypatch):
    monkeypatch.delenv("PREANNOTATE_PROGRESS", raising=False)
    out = console(terminal=True)
    code, job_id = await _train(gateway, out)
    assert code == 0
    assert not any(ELAPSED.search(line) for line in text(out).splitlines())
    assert "convert: succeeded - model ready" in text(out) and "━" in text(out)
    assert f"job {job_id} succeeded" in text(out)


async def test_progress_none_prints_the_outcome_only(gateway):
    out = console()
    code, job_id = await _train(gateway, out, progress="none")
    assert code == 0
    assert text(out).splitlines() == [job_id, f"job {job_id} succeeded; model team-a/birds/1"]


async def test_the_quickstart_stages_into_a_log(gateway):
    job_id = "qs-train-0000beef"
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a")
    out = console()
    follow = asyncio.create_task(flow.follow(gateway.runtime, job_id, out, "model"))
    steps = [
        (events_pb2.JOB_STAGE_EXPORT, events_pb2.JOB_STATE_RUNNING, 0),
        (events_pb2.JOB_STAGE_TRAIN, events_pb2.JOB_STATE_RUNNING, 300),
        (events_pb2.JOB_STAGE_CONVERT, events_pb2.JOB_STATE_SUCCEEDED, 0),
    ]
    for stage, state, step in steps:
        await asyncio.sleep(0.1)
        progress = events_pb2.Progress(step=step, total=600 if step else 0, loss=0.41)
        await gateway.runtime.status_writer.write(
            snapshot(msg, stage=stage, state=state, progress=progress, text="")
        )
    last = await asyncio.wait_for(follow, 10)
    assert last.state == events_pb2.JOB_STATE_SUCCEEDED
    lines = [ELAPSED.sub("", line) for line in text(out).splitlines()]
    assert "model train: running, step 300/600, loss 0.410" in lines, text(out)
    assert lines[-1] == "model convert: succeeded"


async def _new_jobs(gw, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        out = console()
        await cli.train_async(
            task=5,
            model="ssd-mobilenet-v2-coco",
            name=name,
            follow=False,
            connection=connection(gw),
            console=out,
        )
        ids.append(text(out).strip())
    return ids


async def test_jobs_fit_80_columns_and_wide_shows_everything(gateway):
    long_name = "a-model-name-longer-than-the-column-an-80-column-terminal-has"
    ids = await _new_jobs(gateway, [long_name, "owls"])
    out = console(width=80)
    assert await cli.jobs_async(connection=connection(gateway), console=out) == 0
    lines = text(out).splitlines()
    assert all(len(line) <= 80 for line in lines), text(out)
    assert lines[0].split() == ["job", "kind", "state", "stage", "done", "age", "model"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith(" ")}
    assert set(rows) == {job_id[: cli.SHORT_ID] for job_id in ids}
    assert not any(job_id in text(out) for job_id in ids)  # ids cut to 12 characters
    owls = rows[ids[1][: cli.SHORT_ID]]
    assert owls[1:4] == ["training", "queued", "export"] and owls[-1] == "team-a/owls"
    assert re.fullmatch(r"\d+s", owls[-2])  # its age
    assert "team-a/a-model-name" in text(out)  # cut, not folded over lines
    # under a job not yet done, its status text: what it waits for, why it failed
    owls_at = lines.index(next(line for line in lines if line.startswith(ids[1][: cli.SHORT_ID])))
    assert lines[owls_at + 1].startswith("  queued: export of CVAT task 5")

    out = console(width=400)
    assert await cli.jobs_async(wide=True, connection=connection(gateway), console=out) == 0
    assert all(job_id in text(out) for job_id in ids) and long_name in text(out)
    assert "message" in text(out) and "updated" in text(out)


async def test_watch_and_cancel_take_the_short_id(gateway):
    [job_id, _] = await _new_jobs(gateway, ["owls", "geese"])
    out = console()
    code = await cli.cancel_async(
        job_id[: cli.SHORT_ID], connection=connection(gateway), console=out
    )
    assert code == 0 and text(out).startswith(f"job {job_id}: cancelling")
    out = console()
    code = await cli.cancel_async("job-", connection=connection(gateway), console=out)
    assert code == cli.REFUSED
    assert "'job-' names 2 jobs" in text(out) and "--wide" in text(out)
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a")
    await gateway.runtime.status_writer.write(
        snapshot(
            msg,
            stage=events_pb2.JOB_STAGE_EXPORT,
            state=events_pb2.JOB_STATE_CANCELLED,
            text="by bo",
        )
    )
    await asyncio.sleep(0.1)
    out = console()
    code = await cli.watch_async(job_id[:10], connection=connection(gateway), console=out)
    assert code == cli.JOB_FAILED and f"job {job_id} was cancelled: by bo" in text(out)
    out = console()
    code = await cli.watch_async("job-nothing", connection=connection(gateway), console=out)
    assert code == cli.REFUSED and "no job 'job-nothing'" in text(out)
