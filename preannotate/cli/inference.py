"""Client commands over the inference service's InferenceService: ``annotate`` (a
progress bar over the AnnotateTask stream, or plain lines where stdout is not a
terminal: ``preannotate.cli.display``), ``predict`` (detections of local images)
and ``review`` (GetReview: a task's frames ranked by doubt, with CVAT links).

The ``preannotate`` command (``preannotate.cli.main``) wires ``annotate``,
``predict`` and ``review`` to ``add_arguments(name, parser)``, which declares the options and
hands back the handler. Exit codes: 0 done, 1 the run failed part-way, 2 the request was
refused or the service could not be reached. Each command has an ``*_async``
twin for callers that already run an event loop.

Where the service is, from the environment (``Connection.from_env``):
``PREANNOTATE_INFERENCE_ADDRESS`` (default 127.0.0.1:50052), ``PREANNOTATE_TOKEN``
(sent as ``authorization: Bearer``), ``PREANNOTATE_INFERENCE_TLS=1`` or
``PREANNOTATE_INFERENCE_CA_FILE`` (a PEM bundle) for TLS. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from preannotate import grpc_client
from preannotate.cli import display
from preannotate.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50052"
OK, RUN_FAILED, REFUSED = 0, 1, 2


@dataclass(frozen=True)
class Connection(grpc_client.Connection):
    """Where the inference service is: ``PREANNOTATE_INFERENCE_*`` (see above)."""

    env_prefix = "PREANNOTATE_INFERENCE"
    default_address = DEFAULT_ADDRESS
    channel_options = (("grpc.max_send_message_length", 64 << 20),)
    address: str = DEFAULT_ADDRESS


def model_ref(text: str, namespace: str = "") -> common_pb2.ModelRef:
    """``name`` or ``name/version`` (version: a whole number) as a ModelRef."""
    name, _, version = text.partition("/")
    if version and not version.isdigit():
        raise ValueError(f"model {text!r}: write <name> or <name>/<version>, e.g. shapes/3")
    return common_pb2.ModelRef(namespace=namespace, name=name, version=int(version or 0))


def _refused(console: Console, exc: grpc.aio.AioRpcError, conn: Connection) -> int:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        console.print(
            f"[red]error:[/red] the inference service at {conn.address} cannot be reached "
            f"({exc.details()}); set PREANNOTATE_INFERENCE_ADDRESS"
        )
    else:
        console.print(f"[red]error ({exc.code().name.lower()}):[/red] {exc.details()}")
    return REFUSED


# --- annotate ---------------------------------------------------------------------


async def annotate_async(
    *,
    task: int,
    model: str,
    threshold: float = 0.0,
    namespace: str = "",
    job: int = 0,
    replace: bool = False,
    organization: str = "",
    job_id: str = "",
    tracks: bool = False,
    review_issues: int = 0,
    label_thresholds: dict[str, float] | None = None,
    progress: str = "",
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate annotate --task 13 --model NAME``: pre-annotate with a progress bar
    (``tracks``: write CVAT tracks, as a video task gets anyway; ``progress``: bar,
    plain or none, see ``preannotate.cli.display.choose``)."""
    conn = connection or Connection.from_env()
    console = console or Console()
    mode = display.choose(console, progress)
    lines = display.Lines.for_mode(console, mode)
    try:
        ref = model_ref(model, namespace)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return REFUSED
    request = inference_pb2.AnnotateTaskRequest(
        model=ref,
        cvat=common_pb2.CvatRef(task_id=task, job_id=job, organization=organization),
        threshold=threshold,
        mode=events_pb2.ANNOTATE_MODE_REPLACE if replace else events_pb2.ANNOTATE_MODE_APPEND,
        job_id=job_id,
        tracks=tracks,
        review_issues=review_issues,
        label_thresholds=label_thresholds or {},
    )
    last: inference_pb2.AnnotateTaskProgress | None = None
    skipped: list[tuple[int, str]] = []
    bar_view = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} frames  {task.fields[shapes]} shapes"),
        TextColumn("{task.fields[skipped]}"),
        TimeElapsedColumn(),
        console=console,
        disable=mode != "bar",
    )
    async with conn.channel() as channel, lines.beating():
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with bar_view:
            bar = bar_view.add_task(f"task {task}", total=None, shapes=0, skipped="")
            try:
                async for update in stub.AnnotateTask(request, metadata=conn.metadata()):
                    last = update
                    skipped += [(s.frame, s.reason) for s in update.skipped]
                    done = update.frames_done + update.frames_skipped
                    bar_view.update(
                        bar,
                        description=f"task {task} ({update.job_id})",
                        total=update.frames_total,
                        completed=done,
                        shapes=update.shapes_written,
                        skipped=f"{update.frames_skipped} skipped" if update.frames_skipped else "",
                    )
                    lines.show(_line(task, update), key=f"{update.job_id}:{update.done}")
            except grpc.aio.AioRpcError as exc:
                bar_view.stop()
                code = _refused(console, exc, conn)
                return code if last is None else RUN_FAILED
    if last is None or not last.done:
        console.print("[red]error:[/red] the run ended without its final report")
        return RUN_FAILED
    console.print(
        f"wrote {last.shapes_written} shapes on {last.frames_done} of {last.frames_total} "
        f"frames of task {task}"
    )
    for frame, reason in skipped:
        console.print(f"[yellow]skipped frame {frame}:[/yellow] {reason}")
    if last.unmatched_classes:
        console.print(
            "[yellow]classes without a task label (not written):[/yellow] "
            + ", ".join(last.unmatched_classes)
        )
    return OK


def _line(task: int, update: inference_pb2.AnnotateTaskProgress) -> str:
    """A plain progress line: ``task 13 (job-1a2b): 120/500 frames, 310 shapes, 2 skipped``."""
    text = (
        f"task {task} ({update.job_id}): {update.frames_done + update.frames_skipped}/"
        f"{update.frames_total} frames, {update.shapes_written} shapes"
    )
    text += f", {update.frames_skipped} skipped" if update.frames_skipped else ""
    return text + (", done" if update.done else "")


def annotate(**options: Any) -> int:
    return asyncio.run(annotate_async(**options))


# --- predict ----------------------------------------------------------------------


def _pixel_box(d: Any, width: int, height: int) -> list[float]:
    b = d.box
    return [round(v, 1) for v in (b.xmin * width, b.ymin * height, b.xmax * width, b.ymax * height)]


def detections_json(answer: inference_pb2.PredictResponse) -> dict[str, Any]:
    """One image's answer as JSON: boxes in pixels (x1, y1, x2, y2)."""
    w, h = answer.image_width, answer.image_height
    return {
        "model": f"{answer.model.namespace}/{answer.model.name}/{answer.model.version}",
        "width": w,
        "height": h,
        "detections": [
            {
                "label": d.label,
                "class_id": d.class_id,
                "score": round(d.score, 4),
                "box": _pixel_box(d, w, h),
                **({"mask": [d.mask.width, d.mask.height]} if d.HasField("mask") else {}),
            }
            for d in answer.detections
        ],
    }


def _draw(path: Path, answer: inference_pb2.PredictResponse, out: Path) -> None:
    from PIL import Image, ImageDraw

    with Image.open(path) as image:
        canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for d in answer.detections:
        x1, y1, x2, y2 = _pixel_box(d, answer.image_width, answer.image_height)
        draw.rectangle([x1, y1, x2, y2], outline=(255, 200, 0), width=2)
        draw.text((x1 + 2, y1 + 1), f"{d.label} {d.score:.2f}", fill=(255, 200, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    out.write_bytes(buf.getvalue())


async def predict_async(
    *,
    images: Sequence[Path],
    model: str,
    threshold: float = 0.0,
    namespace: str = "",
    out: Path | None = None,
    as_json: bool = False,
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate predict IMAGE... --model NAME``: print detections, or save them
    (``<image>.json`` and ``<image>.png`` with the boxes drawn) under ``out``."""
    conn = connection or Connection.from_env()
    console = console or Console()
    try:
        ref = model_ref(model, namespace)
        paths = [Path(p) for p in images]
        data = [p.read_bytes() for p in paths]
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return REFUSED

    async def requests():
        for i, blob in enumerate(data):
            yield inference_pb2.PredictRequest(
                model=ref, image=blob, threshold=threshold, id=str(i)
            )

    answers: dict[int, inference_pb2.PredictResponse] = {}
    async with conn.channel() as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            async for answer in stub.StreamPredict(requests(), metadata=conn.metadata()):
                answers[int(answer.id)] = answer
        except grpc.aio.AioRpcError as exc:
            return _refused(console, exc, conn)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    report = {}
    for i, path in enumerate(paths):
        answer = answers[i]
        report[str(path)] = detections_json(answer)
        if out is not None:
            (out / f"{path.stem}.json").write_text(json.dumps(report[str(path)], indent=2))
            _draw(path, answer, out / f"{path.stem}.png")
    if as_json:
        console.print_json(json.dumps(report))
        return OK
    for path_text, item in report.items():
        table = Table(title=f"{path_text} ({item['width']}x{item['height']}, {item['model']})")
        for column in ("label", "score", "x1", "y1", "x2", "y2"):
            table.add_column(column)
        for d in item["detections"]:
            table.add_row(d["label"], f"{d['score']:.3f}", *(f"{v:.1f}" for v in d["box"]))
        console.print(table)
    if out is not None:
        console.print(f"saved detections of {len(paths)} images under {out}")
    return OK


def predict(**options: Any) -> int:
    return asyncio.run(predict_async(**options))


# --- review -----------------------------------------------------------------------

#: The table's columns before the link: 63 characters, so that all but the link fit 80.
REVIEW_HEADER = (
    f"{'rank':>4}  {'frame':>7}  {'job':>7}  {'doubt':>5}  {'least sure of':<22}  {'issue':<5}"
)


def review_json(answer: inference_pb2.GetReviewResponse) -> dict[str, Any]:
    """GetReview's answer as JSON: the run's facts, then the frames (boxes in pixels)."""
    m = answer.model
    return {
        "task_id": answer.cvat.task_id,
        "cvat_url": answer.cvat.url,
        "cvat_job_id": answer.cvat.job_id,
        "namespace": answer.namespace,
        "model": f"{m.namespace}/{m.name}/{m.version}",
        "job_id": answer.job_id,
        "threshold": round(answer.threshold, 4),
        "label_thresholds": {k: round(v, 4) for k, v in sorted(answer.label_thresholds.items())},
        "band": round(answer.band, 4),
        "issues_per_job": answer.issues_per_job,
        "created_at": answer.created_at.ToDatetime().isoformat() + "Z",
        "frames_ranked": answer.frames_ranked,
        "frames_doubtful": answer.frames_doubtful,
        "frames": [
            {
                "rank": f.rank,
                "frame": f.frame,
                "cvat_job_id": f.cvat_job_id,
                "doubt": round(f.doubt, 4),
                "shapes_written": f.shapes_written,
                "worst": {
                    "label": f.worst.label,
                    "score": round(f.worst.score, 4),
                    "box": [round(v, 1) for v in (f.worst.x1, f.worst.y1, f.worst.x2, f.worst.y2)],
                    "written": f.worst.written,
                }
                if f.HasField("worst")
                else None,
                "issue_opened": f.issue_opened,
                "link": f.link,
            }
            for f in answer.frames
        ],
    }


def review_row(f: inference_pb2.ReviewedFrame) -> str:
    """One table row: rank, frame, job, doubt, the least sure detection, issue, link."""
    if f.HasField("worst"):
        worst = f"{f.worst.label[:17]} {f.worst.score:.2f}"
    else:
        worst = "(nothing found)"
    issue = "yes" if f.issue_opened else "-"
    return (
        f"{f.rank:>4}  {f.frame:>7}  {f.cvat_job_id:>7}  {f.doubt:>5.2f}  {worst:<22}  "
        f"{issue:<5}  {f.link}"
    )


async def review_async(
    *,
    task: int,
    cvat_url: str = "",
    organization: str = "",
    namespace: str = "",
    limit: int = 20,
    as_json: bool = False,
    connection: Connection | None = None,
    console: Console | None = None,
) -> int:
    """``preannotate review TASK``: the task's frames ranked by how unsure the model was
    in its newest pre-annotation run, the most doubtful first, with a CVAT link each."""
    conn = connection or Connection.from_env()
    console = console or Console()
    if limit < 0:
        console.print(f"[red]error:[/red] --limit {limit}: give 0 (every frame) or more")
        return REFUSED
    request = inference_pb2.GetReviewRequest(
        cvat=common_pb2.CvatRef(url=cvat_url, task_id=task, organization=organization),
        namespace=namespace,
        limit=limit,
    )
    async with conn.channel() as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            answer = await stub.GetReview(request, metadata=conn.metadata())
        except grpc.aio.AioRpcError as exc:
            return _refused(console, exc, conn)
    if as_json:
        console.print_json(json.dumps(review_json(answer)))
        return OK
    plain = {"markup": False, "highlight": False, "soft_wrap": True}
    m = answer.model
    console.print(
        f"CVAT task {answer.cvat.task_id} at {answer.cvat.url}: run {answer.job_id}, model "
        f"{m.namespace}/{m.name}/{m.version}, threshold {answer.threshold:.2f}, "
        f"{answer.created_at.ToDatetime():%Y-%m-%d %H:%M} UTC",
        **plain,
    )
    shown = len(answer.frames)
    console.print(
        f"{answer.frames_doubtful} of {answer.frames_ranked} frames with some doubt"
        + (f", the first {shown} shown (--limit 0: all)" if shown < answer.frames_doubtful else ""),
        **plain,
    )
    if not answer.frames:
        return OK
    console.print(REVIEW_HEADER + "  link", **plain)
    for f in answer.frames:
        console.print(review_row(f), **plain)
    return OK


def review(**options: Any) -> int:
    return asyncio.run(review_async(**options))


# --- argparse wiring (for ``preannotate.cli.main``) --------------------------------------


def add_arguments(
    name: str, parser: argparse.ArgumentParser
) -> Callable[[argparse.Namespace], int]:
    """Declare the options of command ``name`` on ``parser``; returns its handler."""
    if name == "review":
        parser.add_argument("task", type=int, metavar="TASK", help="CVAT task id")
        parser.add_argument(
            "--cvat", default="", metavar="URL", help="CVAT's URL (default: the service's)"
        )
        parser.add_argument("--org", default="", help="CVAT organization slug")
        parser.add_argument("--namespace", default="", help="namespace (the service's default)")
        parser.add_argument(
            "--limit",
            type=int,
            default=20,
            metavar="N",
            help="show the N most doubtful frames (default 20; 0: all)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return lambda ns: review(
            task=ns.task,
            cvat_url=ns.cvat,
            organization=ns.org,
            namespace=ns.namespace,
            limit=ns.limit,
            as_json=ns.json,
        )
    parser.add_argument("--model", required=True, help="model name, or <name>/<version>")
    parser.add_argument("--namespace", default="", help="namespace (the service's default)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="lowest score kept (default: the model's suggested threshold, from its validation "
        "split; the service's default for a model without one)",
    )
    if name == "annotate":
        parser.add_argument("--task", type=int, required=True, help="CVAT task id")
        parser.add_argument("--job", type=int, default=0, help="only this job of the task")
        parser.add_argument(
            "--replace", action="store_true", help="remove earlier automatic shapes first"
        )
        parser.add_argument("--org", default="", help="CVAT organization slug")
        parser.add_argument("--job-id", default="", help="idempotency key / job id to use")
        parser.add_argument(
            "--tracks",
            action="store_true",
            help="write CVAT tracks (boxes linked across frames, keyframes only) instead of "
            "one shape per frame; a video task gets tracks without it",
        )
        parser.add_argument(
            "--review-issues",
            type=int,
            default=0,
            metavar="N",
            help="open up to N CVAT issues per job on the frames where the model was least "
            "sure, for reviewers to start from (default 0: none)",
        )
        parser.add_argument(
            "--label-threshold",
            action="append",
            default=[],
            type=_label_threshold,
            metavar="LABEL=SCORE",
            help="a label's own threshold (repeatable), e.g. --label-threshold cat=0.7; the "
            "other labels use --threshold",
        )
        display.add_option(parser)
        return lambda ns: annotate(
            task=ns.task,
            model=ns.model,
            threshold=ns.threshold,
            namespace=ns.namespace,
            job=ns.job,
            replace=ns.replace,
            organization=ns.org,
            job_id=ns.job_id,
            tracks=ns.tracks,
            review_issues=ns.review_issues,
            label_thresholds=dict(ns.label_threshold),
            progress=ns.progress,
        )
    if name == "predict":
        parser.add_argument("images", nargs="+", type=Path, help="JPEG or PNG files")
        parser.add_argument("--out", type=Path, default=None, help="save JSON and drawn PNGs here")
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        return lambda ns: predict(
            images=ns.images,
            model=ns.model,
            threshold=ns.threshold,
            namespace=ns.namespace,
            out=ns.out,
            as_json=ns.json,
        )
    raise ValueError(f"no inference command {name!r}; have {', '.join(COMMANDS)}")


#: The commands ``add_arguments`` knows, with their one-line help.
COMMANDS = {
    "annotate": "pre-annotate a CVAT task with a model, with a progress bar",
    "predict": "print (or save) a model's detections on local images",
    "review": "a CVAT task's frames ranked by how unsure the model was, with CVAT links",
}


def _label_threshold(text: str) -> tuple[str, float]:
    """``LABEL=SCORE`` of ``--label-threshold``, the score in 0..1."""
    label, sep, value = text.rpartition("=")
    try:
        score = float(value)
    except ValueError:
        score = -1.0
    if not sep or not label or not 0 <= score <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=SCORE with a score in 0..1")
    return label, score
