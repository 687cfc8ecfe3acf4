"""Client commands over the gateway's TrainingService: train (with a live progress
bar, or plain lines where stdout is not a terminal: ``preannotate.cli.display``),
watch, cancel, jobs, models, model-types, promote, rollback.

The ``preannotate`` command (``preannotate.cli.main``) lets
``add_arguments(name, parser)`` declare a command's options and hand back its
handler; each command takes the parsed options as keyword arguments and
returns the exit code: 0 done, 1 the job failed or was cancelled, 2 the
request was refused or the gateway could not be reached. Every command has an ``*_async`` twin for
callers that already run an event loop (tests, the embedded mode).

Where the gateway is, from the environment (``Connection.from_env``):
``PREANNOTATE_GATEWAY_ADDRESS`` (default 127.0.0.1:50051), ``PREANNOTATE_TOKEN``
(sent as ``authorization: Bearer``), ``PREANNOTATE_GATEWAY_TLS=1`` or
``PREANNOTATE_GATEWAY_CA_FILE`` (a PEM bundle) for TLS.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from preannotate import grpc_client, modelmetrics
from preannotate.cli import display
from preannotate.status import TERMINAL, stage_name, state_name
from preannotate.v1 import common_pb2, events_pb2, training_pb2, training_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Reconnections of ``train``/``watch`` when the gateway goes away mid-stream.
RECONNECTS = 5

OK, JOB_FAILED, REFUSED = 0, 1, 2


@dataclass(frozen=True)
class Connection(grpc_client.Connection):
    """Where the gateway is: ``PREANNOTATE_GATEWAY_*`` (see above)."""

    env_prefix = "PREANNOTATE_GATEWAY"
    default_address = DEFAULT_ADDRESS
    address: str = DEFAULT_ADDRESS


def _refused(console: Console, exc: grpc.aio.AioRpcError, conn: Connection) -> int:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        console.print(
            f"[red]error:[/red] the gateway at {conn.address} cannot be reached "
            f"({exc.details()}); set PREANNOTATE_GATEWAY_ADDRESS"
        )
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        console.print(f"[red]error:[/red] {exc.details()}")
    else:
        console.print(f"[red]error ({code.name.lower()}):[/red] {exc.details()}")
    return REFUSED


# --- train and watch -------------------------------------------------------------


async def train_async(
    *,
    task: int,
    model: str,
    args: str = "",
    base_model: str = "",
    machine_type: str = "",
    gpus: int = 0,
    name: str = "",
    namespace: str = "",
    request_id: str = "",
    follow: bool = True,
    progress: str = "",
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate train``: ask for a model, print the job id, follow it to its end
    (``progress``: bar, plain or none; see ``preannotate.cli.display.choose``)."""
    conn = connection or Connection.from_env()
    console = console or Console()
    request = training_pb2.CreateAnnotationModelRequest(
        namespace=namespace,
        cvat=common_pb2.CvatRef(task_id=task),
        model_type=model,
        arguments=args,
        base_model=base_model,
        gpus=gpus,
        machine_type=machine_type,
        model_name=name,
        request_id=request_id,
    )
    async with conn.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        try:
            reply = await stub.CreateAnnotationModel(request, metadata=conn.metadata())
        except grpc.aio.AioRpcError as exc:
            return _refused(console, exc, conn)
        console.print(reply.job_id)
        if not follow:
            return OK
        return await _follow(stub, reply.job_id, conn, console, progress)


async def watch_async(
    job_id: str,
    *,
    progress: str = "",
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate watch JOB``: follow a job with a progress bar until it ends
    (``JOB``: its id or, as ``jobs`` shows it, a prefix that names one job)."""
    conn = connection or Connection.from_env()
    console = console or Console()
    async with conn.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        try:
            job_id = await _full_id(stub, job_id, conn)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return REFUSED
        return await _follow(stub, job_id, conn, console, progress)


async def _full_id(stub, job_id: str, conn: Connection) -> str:
    """``job_id``, or the one visible job whose id starts with it (``jobs`` shows 12 chars).

    Where the jobs cannot be listed, ``job_id`` as given: the call that follows
    (WatchJob, CancelJob) says what is wrong with it.
    """
    try:
        reply = await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=conn.metadata())
    except grpc.aio.AioRpcError:
        return job_id
    ids = [job.job_id for job in reply.jobs]
    if job_id in ids:
        return job_id
    matches = [each for each in ids if each.startswith(job_id)]
    if len(matches) > 1:
        raise ValueError(
            f"{job_id!r} names {len(matches)} jobs ({', '.join(sorted(matches)[:5])}); "
            "give more of the id (preannotate jobs --wide shows it whole)"
        )
    return matches[0] if matches else job_id  # none: the gateway says it is not found


def _describe(status: events_pb2.JobStatus) -> str:
    text = f"{stage_name(status.stage)}: {state_name(status.state)}"
    return f"{text} - {status.message}" if status.message else text


def _figures(status: events_pb2.JobStatus, sep: str = "  ") -> str:
    p = status.progress
    parts = []
    if p.total:
        parts.append(f"step {p.step}/{p.total}")
    if p.loss:
        parts.append(f"loss {p.loss:.4f}")
    if p.images_per_second:
        parts.append(f"{p.images_per_second:.1f} img/s")
    if p.eta_seconds:
        parts.append(f"eta {_duration(p.eta_seconds)}")
    return sep.join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _line(status: events_pb2.JobStatus) -> str:
    """A plain progress line: ``train: running, step 300/600, loss 0.4100, ...``."""
    figures = _figures(status, ", ")
    return f"{_describe(status)}, {figures}" if figures else _describe(status)


async def _follow(stub, job_id: str, conn: Connection, console: Console, mode: str = "") -> int:
    last: events_pb2.JobStatus | None = None
    mode = display.choose(console, mode)
    lines = display.Lines.for_mode(console, mode)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=mode != "bar",
    )
    reconnects = 0
    async with lines.beating():
        with progress:
            bar = progress.add_task(job_id, total=None, figures="")
            while True:
                try:
                    async for status in stub.WatchJob(
                        training_pb2.GetJobRequest(job_id=job_id), metadata=conn.metadata()
                    ):
                        last = status
                        _show(progress, bar, status)
                        lines.show(_line(status), key=f"{status.stage}:{status.state}")
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or reconnects >= RECONNECTS:
                        progress.stop()
                        return _refused(console, exc, conn)
                if (last is not None and last.state in TERMINAL) or reconnects >= RECONNECTS:
                    break
                reconnects += 1  # the gateway went away mid-stream (a restart): follow again
                await asyncio.sleep(min(2.0**reconnects, 30.0))
    return _ending(console, job_id, last)


def _show(progress: Progress, bar, status: events_pb2.JobStatus) -> None:
    """Move the bar to ``status`` (stages without steps keep the last bar)."""
    if status.progress.total:
        progress.update(bar, total=status.progress.total, completed=status.progress.step)
    if status.state == events_pb2.JOB_STATE_SUCCEEDED:
        done = progress.tasks[0].total or 1
        progress.update(bar, total=done, completed=done)
    progress.update(bar, description=_describe(status), figures=_figures(status))


def _ending(console: Console, job_id: str, status: events_pb2.JobStatus | None) -> int:
    if status is None or status.state not in TERMINAL:
        console.print(f"[red]error:[/red] the status stream of job {job_id} ended early")
        return REFUSED
    if status.state == events_pb2.JOB_STATE_SUCCEEDED:
        model = status.model
        what = f"; model {model.namespace}/{model.name}/{model.version}" if model.name else ""
        console.print(f"[green]job {job_id} succeeded[/green]{what}")
        return OK
    verb = "failed" if status.state == events_pb2.JOB_STATE_FAILED else "was cancelled"
    console.print(f"[red]job {job_id} {verb}:[/red] {status.message}")
    return JOB_FAILED


# --- tables -------------------------------------------------------------------


def _when(ts) -> str:
    if not ts.seconds:
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M")


async def _call(conn: Connection, console: Console, method: str, request):
    async with conn.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        try:
            return await getattr(stub, method)(request, metadata=conn.metadata()), OK
        except grpc.aio.AioRpcError as exc:
            return None, _refused(console, exc, conn)


async def jobs_async(
    *,
    namespace: str = "",
    states: Sequence[str] = (),
    wide: bool = False,
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate jobs``: a table of the jobs the caller may see (``states``: e.g. running);
    compact enough for 80 columns (ids cut to ``SHORT_ID``), or every field with ``wide``."""
    conn = connection or Connection.from_env()
    console = console or Console()
    wanted = []
    for state in states:
        try:
            wanted.append(events_pb2.JobState.Value("JOB_STATE_" + state.upper()))
        except ValueError:
            names = [state_name(v) for v in events_pb2.JobState.values() if v]
            console.print(f"[red]error:[/red] unknown state {state!r}; use {', '.join(names)}")
            return REFUSED
    reply, code = await _call(
        conn, console, "ListJobs", training_pb2.ListJobsRequest(namespace=namespace, states=wanted)
    )
    if reply is None:
        return code
    if not reply.jobs:
        console.print("no jobs")
    elif wide:
        console.print(_wide_jobs(reply.jobs))
    else:
        for line in _compact_jobs(reply.jobs, datetime.now(UTC), console.width):
            console.print(line, markup=False, highlight=False, no_wrap=True, crop=True)
    return OK


#: Characters of a job id ``jobs`` shows ("job-" and 8 hex digits); ``watch`` and
#: ``cancel`` take such a prefix.
SHORT_ID = 12


def _kind(job: events_pb2.JobStatus) -> str:
    return events_pb2.JobKind.Name(job.kind).removeprefix("JOB_KIND_").lower()


def _compact_jobs(jobs: Sequence[events_pb2.JobStatus], now: datetime, width: int) -> list[str]:
    """id, kind, state, stage, progress %, age, namespace/model in ``width`` columns (80
    and up; only namespace/model gives way, cut with an ellipsis), and under a job not
    yet succeeded its status text (what it waits for, why it failed, its retries)."""
    rows = []
    for job in jobs:
        p = job.progress
        if job.state == events_pb2.JOB_STATE_SUCCEEDED:
            percent = "100%"
        else:
            percent = f"{100 * p.step // p.total}%" if p.total else ""
        model = job.model.name or job.training.model_name
        rows.append(
            [
                job.job_id[:SHORT_ID],
                _kind(job),
                state_name(job.state),
                stage_name(job.stage),
                percent,
                _age(job.created_at.seconds or job.updated_at.seconds, now),
                f"{job.namespace}/{model}" if model else job.namespace,
            ]
        )
    headers = ["job", "kind", "state", "stage", "done", "age", "model"]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    widths[-1] = max(8, width - sum(widths[:-1]) - 2 * (len(headers) - 1))  # 2 between

    def line(cells: list[str]) -> str:
        cut = [_cut(cell, size) for cell, size in zip(cells, widths, strict=True)]
        padded = [
            c.rjust(w) if h == "done" else c.ljust(w)
            for c, w, h in zip(cut, widths, headers, strict=True)
        ]
        return "  ".join(padded).rstrip()

    out = [line(headers)]
    for job, row in zip(jobs, rows, strict=True):
        out.append(line(row))
        if job.message and job.state != events_pb2.JOB_STATE_SUCCEEDED:
            out.append(_cut(f"  {job.message}", width))
    return out


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _age(seconds: int, now: datetime) -> str:
    """``45s``, ``12m``, ``3h``, ``5d`` since ``seconds`` (a Unix time), as kubectl writes it."""
    if not seconds:
        return ""
    age = max(0, int(now.timestamp()) - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age // size}{unit}"
    return f"{age}s"


def _wide_jobs(jobs: Sequence[events_pb2.JobStatus]) -> Table:
    table = Table(
        "job",
        "namespace",
        "kind",
        "stage",
        "state",
        "progress",
        "task",
        "model",
        "updated",
        "message",
    )
    for job in jobs:
        p = job.progress
        model = job.model.name or job.training.model_name
        table.add_row(
            job.job_id,
            job.namespace,
            _kind(job),
            stage_name(job.stage),
            state_name(job.state),
            f"{p.step}/{p.total}" if p.total else "",
            str(job.cvat.task_id or ""),
            model,
            _when(job.updated_at),
            job.message,
        )
    return table


async def models_async(
    *, namespace: str = "", connection: Connection | None = None, console: Console | None = None
) -> int:
    """``preannotate models``: the ready models of a namespace."""
    conn = connection or Connection.from_env()
    console = console or Console()
    reply, code = await _call(
        conn, console, "ListModels", common_pb2.ListModelsRequest(namespace=namespace)
    )
    if reply is None:
        return code
    table = Table(
        "model",
        "version",
        "status",
        "type",
        "start",
        "classes",
        "metrics",
        "corrections",
        "eval set",
        "serving",
        "job",
        "created",
    )
    for m in reply.models:
        classes = ", ".join(m.classes[:5]) + (
            f" (+{len(m.classes) - 5})" if len(m.classes) > 5 else ""
        )
        metrics = _metrics_text(m.metrics)
        fixes = m.metrics.get("corrections/per_100_objects")
        corrections = "-"
        if fixes is not None:
            corrections = (
                f"{fixes:.1f}/100 objects, {m.metrics['corrections/per_frame']:.2f}/frame "
                f"({int(m.metrics['corrections/jobs'])} jobs)"
            )
        status = m.status or "-"
        if m.status_reason and m.status != "previous":
            status += f" ({m.status_reason})"
        table.add_row(
            f"{m.ref.namespace}/{m.ref.name}",
            str(m.ref.version),
            status,
            m.model_type,
            m.start or "-",
            classes,
            metrics,
            corrections,
            m.evaluation_set or "-",
            "yes" if m.serving_path else "not yet",
            m.job_id,
            _when(m.created_at),
        )
    console.print(table if reply.models else "no ready models")
    return OK


def _metrics_text(metrics: Mapping[str, float]) -> str:
    """mAP@0.5 and mAP (else the first three by name) and the suggested threshold."""
    headline = [k for k in (modelmetrics.MAP_50, "mAP") if k in metrics]
    if not headline:
        headline = sorted(
            k for k in metrics if not k.startswith("corrections/") and "suggested" not in k
        )[:3]
    text = [f"{k}={metrics[k]:.3f}" for k in headline]
    if modelmetrics.SUGGESTED_THRESHOLD in metrics:
        text.append(f"threshold={metrics[modelmetrics.SUGGESTED_THRESHOLD]:g}")
    return ", ".join(text)


async def model_types_async(
    *,
    verbose: bool = False,
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate model-types``: the catalog, with defaults and when to pick each."""
    conn = connection or Connection.from_env()
    console = console or Console()
    reply, code = await _call(conn, console, "ListModelTypes", training_pb2.ListModelTypesRequest())
    if reply is None:
        return code
    table = Table("name", "built as", "batch", "lr", "steps", "input", "GPUs", "when to pick")
    for t in reply.model_types:
        table.add_row(
            t.name,
            t.built_as,
            str(t.batch_size),
            f"{t.learning_rate:g}",
            str(t.steps) if t.steps else "by stage",
            str(t.input_size),
            f"{t.min_gpus}+" if t.min_gpus > 1 else "any",
            t.when_to_pick,
        )
    console.print(table)
    if verbose:
        for t in reply.model_types:
            args = Table("argument", "kind", "default", "help", title=t.name)
            for a in t.arguments:
                args.add_row(a.key, a.kind, a.default_value, a.help)
            console.print(args)
    return OK


async def cancel_async(
    job_id: str, *, connection: Connection | None = None, console: Console | None = None
) -> int:
    """``preannotate cancel JOB``: ask a job to stop (``JOB``: its id or a prefix of one)."""
    conn = connection or Connection.from_env()
    console = console or Console()
    async with conn.channel() as channel:
        try:
            job_id = await _full_id(training_pb2_grpc.TrainingServiceStub(channel), job_id, conn)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return REFUSED
    reply, code = await _call(conn, console, "CancelJob", training_pb2.GetJobRequest(job_id=job_id))
    if reply is None:
        return code
    console.print(f"job {job_id}: {state_name(reply.state)} - {reply.message}")
    return OK


async def _change(conn: Connection | None, console: Console | None, method: str, request) -> int:
    """Call a PromoteModel / RollbackModel and print what the gateway answered."""
    conn = conn or Connection.from_env()
    console = console or Console()
    reply, code = await _call(conn, console, method, request)
    if reply is not None:
        console.print(reply.message)
    return code


async def promote_async(
    name: str,
    version: int,
    *,
    namespace: str = "",
    reason: str = "",
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate promote NAME VERSION``: make that version the one that serves."""
    request = training_pb2.PromoteModelRequest(
        namespace=namespace, name=name, version=version, reason=reason
    )
    return await _change(connection, console, "PromoteModel", request)


async def rollback_async(
    name: str,
    *,
    namespace: str = "",
    reason: str = "",
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate rollback NAME``: serve the version promoted before the current one."""
    request = training_pb2.RollbackModelRequest(namespace=namespace, name=name, reason=reason)
    return await _change(connection, console, "RollbackModel", request)


# --- the synchronous commands -------------------------------------------------------


def train(**options) -> int:
    """See ``train_async``."""
    return asyncio.run(train_async(**options))


def watch(job_id: str, **options) -> int:
    return asyncio.run(watch_async(job_id, **options))


def jobs(**options) -> int:
    return asyncio.run(jobs_async(**options))


def models(**options) -> int:
    return asyncio.run(models_async(**options))


def model_types(**options) -> int:
    return asyncio.run(model_types_async(**options))


def cancel(job_id: str, **options) -> int:
    return asyncio.run(cancel_async(job_id, **options))


def promote(name: str, version: int, **options) -> int:
    return asyncio.run(promote_async(name, version, **options))


def rollback(name: str, **options) -> int:
    return asyncio.run(rollback_async(name, **options))


# --- argparse wiring (for ``preannotate.cli.main``) --------------------------------------


def add_arguments(
    name: str, parser: argparse.ArgumentParser
) -> Callable[[argparse.Namespace], int]:
    """Declare the options of command ``name`` on ``parser``; returns its handler."""
    if name == "train":
        parser.add_argument("--task", type=int, required=True, help="CVAT task id to train from")
        parser.add_argument("--model", required=True, help="model type (see model-types)")
        parser.add_argument("--args", default="", help='e.g. "epochs=4000;batch_size=24"')
        parser.add_argument("--base-model", default="", help="<name>[/<version>] to start from")
        parser.add_argument("--machine-type", default="", help="trainer pool (default pool)")
        parser.add_argument("--gpus", type=int, default=0, help="GPUs (picks a machine type)")
        parser.add_argument("--name", default="", help="name of the model to produce")
        parser.add_argument("--namespace", default="", help="namespace (the gateway's default)")
        parser.add_argument("--request-id", default="", help="idempotency key")
        parser.add_argument(
            "--no-follow", dest="follow", action="store_false", help="print the job id and return"
        )
        display.add_option(parser)
        keys = (
            "task",
            "model",
            "args",
            "base_model",
            "machine_type",
            "gpus",
            "name",
            "namespace",
            "request_id",
            "follow",
            "progress",
        )
        return lambda ns: train(**{k: getattr(ns, k) for k in keys})
    if name == "watch":
        parser.add_argument("job_id", help="the job id (or a prefix naming one job)")
        display.add_option(parser)
        return lambda ns: watch(ns.job_id, progress=ns.progress)
    if name == "cancel":
        parser.add_argument("job_id", help="the job id (or a prefix naming one job)")
        return lambda ns: cancel(ns.job_id)
    if name == "jobs":
        parser.add_argument("--namespace", default="", help="only this namespace")
        parser.add_argument(
            "--state",
            dest="states",
            action="append",
            default=[],
            help="only jobs in this state (repeatable): queued, running, ...",
        )
        parser.add_argument(
            "--wide", action="store_true", help="every field, full ids (default: fits 80 columns)"
        )
        return lambda ns: jobs(namespace=ns.namespace, states=ns.states, wide=ns.wide)
    if name == "models":
        parser.add_argument("--namespace", default="", help="namespace (the gateway's default)")
        return lambda ns: models(namespace=ns.namespace)
    if name == "model-types":
        parser.add_argument("-v", "--verbose", action="store_true", help="list every argument")
        return lambda ns: model_types(verbose=ns.verbose)
    if name in ("promote", "rollback"):
        parser.add_argument("name", help="the model name")
        if name == "promote":
            parser.add_argument("version", type=int, help="the version to serve")
        parser.add_argument("--namespace", default="", help="namespace (the gateway's default)")
        parser.add_argument("--reason", default="", help="why, for the promotion log")
        if name == "promote":
            return lambda ns: promote(ns.name, ns.version, namespace=ns.namespace, reason=ns.reason)
        return lambda ns: rollback(ns.name, namespace=ns.namespace, reason=ns.reason)
    raise ValueError(f"no gateway command {name!r}; have {', '.join(COMMANDS)}")


#: The commands ``add_arguments`` knows, with their one-line help.
COMMANDS = {
    "train": "ask for a model and follow its job with a progress bar",
    "watch": "follow a job until it ends",
    "jobs": "list jobs",
    "models": "list ready models",
    "model-types": "list the model catalog",
    "cancel": "ask a job to stop",
    "promote": "make a model version the one that serves (admin)",
    "rollback": "serve the version promoted before the current one (admin)",
}
