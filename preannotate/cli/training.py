"""Client commands over the gateway's TrainingService: train (with a live progress
bar), watch, cancel, jobs, models, model-types.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from preannotate import grpc_client
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
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate train``: ask for a model, print the job id, follow it to its end."""
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
        return await _follow(stub, reply.job_id, conn, console)


async def watch_async(
    job_id: str, *, connection: Connection | None = None, console: Console | None = None
) -> int:
    """``preannotate watch JOB``: follow a job with a progress bar until it ends."""
    conn = connection or Connection.from_env()
    console = console or Console()
    async with conn.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        return await _follow(stub, job_id, conn, console)


def _describe(status: events_pb2.JobStatus) -> str:
    text = f"{stage_name(status.stage)}: {state_name(status.state)}"
    return f"{text} - {status.message}" if status.message else text


def _figures(status: events_pb2.JobStatus) -> str:
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
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


async def _follow(stub, job_id: str, conn: Connection, console: Console) -> int:
    last: events_pb2.JobStatus | None = None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    reconnects = 0
    with progress:
        bar = progress.add_task(job_id, total=None, figures="")
        while True:
            try:
                async for status in stub.WatchJob(
                    training_pb2.GetJobRequest(job_id=job_id), metadata=conn.metadata()
                ):
                    last = status
                    if status.progress.total:  # stages without steps keep the last bar
                        progress.update(
                            bar, total=status.progress.total, completed=status.progress.step
                        )
                    if status.state == events_pb2.JOB_STATE_SUCCEEDED:
                        done = progress.tasks[0].total or 1
                        progress.update(bar, total=done, completed=done)
                    progress.update(bar, description=_describe(status), figures=_figures(status))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or reconnects >= RECONNECTS:
                    progress.stop()
                    return _refused(console, exc, conn)
            if (last is not None and last.state in TERMINAL) or reconnects >= RECONNECTS:
                break
            reconnects += 1  # the gateway went away mid-stream (a restart): follow again
            await asyncio.sleep(min(2.0**reconnects, 30.0))
    return _ending(console, job_id, last)


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
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate jobs``: a table of the jobs the caller may see (``states``: e.g. running)."""
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
    for job in reply.jobs:
        p = job.progress
        model = job.model.name or job.training.model_name
        table.add_row(
            job.job_id,
            job.namespace,
            events_pb2.JobKind.Name(job.kind).removeprefix("JOB_KIND_").lower(),
            stage_name(job.stage),
            state_name(job.state),
            f"{p.step}/{p.total}" if p.total else "",
            str(job.cvat.task_id or ""),
            model,
            _when(job.updated_at),
            job.message,
        )
    console.print(table if reply.jobs else "no jobs")
    return OK


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
        "model", "version", "type", "start", "classes", "metrics", "serving", "job", "created"
    )
    for m in reply.models:
        classes = ", ".join(m.classes[:5]) + (
            f" (+{len(m.classes) - 5})" if len(m.classes) > 5 else ""
        )
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(m.metrics.items())[:3])
        table.add_row(
            f"{m.ref.namespace}/{m.ref.name}",
            str(m.ref.version),
            m.model_type,
            m.start or "-",
            classes,
            metrics,
            "yes" if m.serving_path else "not yet",
            m.job_id,
            _when(m.created_at),
        )
    console.print(table if reply.models else "no ready models")
    return OK


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
    """``preannotate cancel JOB``: ask a job to stop."""
    conn = connection or Connection.from_env()
    console = console or Console()
    reply, code = await _call(conn, console, "CancelJob", training_pb2.GetJobRequest(job_id=job_id))
    if reply is None:
        return code
    console.print(f"job {job_id}: {state_name(reply.state)} - {reply.message}")
    return OK


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
        )
        return lambda ns: train(**{k: getattr(ns, k) for k in keys})
    if name in ("watch", "cancel"):
        parser.add_argument("job_id", help="the job id")
        command = watch if name == "watch" else cancel
        return lambda ns: command(ns.job_id)
    if name == "jobs":
        parser.add_argument("--namespace", default="", help="only this namespace")
        parser.add_argument(
            "--state",
            dest="states",
            action="append",
            default=[],
            help="only jobs in this state (repeatable): queued, running, ...",
        )
        return lambda ns: jobs(namespace=ns.namespace, states=ns.states)
    if name == "models":
        parser.add_argument("--namespace", default="", help="namespace (the gateway's default)")
        return lambda ns: models(namespace=ns.namespace)
    if name == "model-types":
        parser.add_argument("-v", "--verbose", action="store_true", help="list every argument")
        return lambda ns: model_types(verbose=ns.verbose)
    raise ValueError(f"no gateway command {name!r}; have {', '.join(COMMANDS)}")


#: The commands ``add_arguments`` knows, with their one-line help.
COMMANDS = {
    "train": "ask for a model and follow its job with a progress bar",
    "watch": "follow a job until it ends",
    "jobs": "list jobs",
    "models": "list ready models",
    "model-types": "list the model catalog",
    "cancel": "ask a job to stop",
}
