"""``preannotate quickstart``: the whole loop on this machine, on data it makes.

It makes a small detection dataset (shapes of three classes on textured
backgrounds, a held-out part kept aside), runs the five services in one
process (the embedded mode), feeds the training set through export, training
(ssd-mobilenet-v2-coco at a small input size), conversion and pre-annotation of
the held-out images, and ends with mAP@0.5 on the held-out images, where every
artefact lies, and a CVAT-importable COCO 1.0 zip of the predictions.
``--cvat-url`` runs the same loop on real CVAT tasks instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from preannotate.modelmetrics import SUGGESTED_THRESHOLD

#: ``pretrained=false``: the quickstart trains from random weights, so it runs offline
#: (no published weights to fetch, nothing to ``preannotate weights pull`` first) and
#: its figures in docs/benchmarks.md stay comparable from run to run.
DEFAULT_ARGS = (
    "epochs=1500;batch_size=8;input_size=128;initial_learning_rate=0.02;"
    "warmup_steps=100;checkpoint_every=500;pretrained=false"
)


def add_arguments(_name: str, parser: argparse.ArgumentParser):
    parser.add_argument(
        "--workdir", type=Path, default=Path("var/quickstart"), help="where everything goes"
    )
    parser.add_argument(
        "--images", type=int, default=300, help="images to make (training + held-out)"
    )
    parser.add_argument(
        "--held-out", type=int, default=60, help="images kept aside and pre-annotated"
    )
    parser.add_argument("--size", type=int, default=128, help="image size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="ssd-mobilenet-v2-coco", help="catalog model type")
    parser.add_argument(
        "--args", default=DEFAULT_ARGS, help="training arguments (the seed's syntax)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="lowest score written (default: the trained model's suggested threshold)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before giving up")
    parser.add_argument("--cvat-url", default="", help="use this CVAT instead of made-up data")
    parser.add_argument("--task", type=int, default=0, help="with --cvat-url: the annotated task")
    parser.add_argument(
        "--annotate-task", type=int, default=0, help="with --cvat-url: the task to pre-annotate"
    )
    from preannotate.cli import display

    display.add_option(parser)
    parser.add_argument(
        "--cvat-token",
        default=os.environ.get("PREANNOTATE_CVAT_TOKEN", ""),
        help="CVAT access token (or PREANNOTATE_CVAT_TOKEN)",
    )
    return run


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs off the console
    from rich.console import Console

    console = Console(file=sys.stdout)  # bound now: a library swapping sys.stdout cannot take it
    if args.cvat_url and not (args.task and args.annotate_task):
        console.print("[red]error:[/red] --cvat-url needs --task (to train on) and --annotate-task")
        return 2
    try:
        return asyncio.run(_run(args, console))
    except Exception as exc:  # the one place a user sees: say what failed, exit non-zero
        from preannotate.errors import PreannotateError

        if not isinstance(exc, PreannotateError | TimeoutError):
            raise
        console.print(f"[red]quickstart failed:[/red] {exc}")
        console.print(f"logs: {args.workdir / 'quickstart.log'}")
        return 1


async def _run(args: argparse.Namespace, console) -> int:
    from preannotate.quickstart import score, shapes
    from preannotate.quickstart.embedded import run_embedded
    from preannotate.v1 import common_pb2

    started = time.monotonic()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    heldout = work / "heldout"
    if args.cvat_url:
        train_source = common_pb2.CvatRef(url=args.cvat_url, task_id=args.task)
        target = common_pb2.CvatRef(url=args.cvat_url, task_id=args.annotate_task)
        truth = None
        cvat = {"cvat_url": args.cvat_url, "cvat_token": args.cvat_token}
    else:
        if args.held_out < 1 or args.images - args.held_out < 20:
            console.print("[red]error:[/red] keep at least 20 training images and 1 held-out image")
            return 2
        console.print(
            f"making {args.images} images of shapes ({args.size} px), {args.held_out} held out"
        )
        samples = shapes.make_dataset(args.images, size=args.size, seed=args.seed)
        train, held = samples[: -args.held_out], samples[-args.held_out :]
        export_zip = shapes.write_cvat_export(train, work / "data" / "shapes-train-coco.zip")
        for old in (heldout / "annotations").glob("*.json"):
            old.unlink()
        shapes.write_images(held, heldout / "images" / "default")
        truth = work / "data" / "heldout-truth.json"
        truth.write_text(json.dumps(shapes.coco_json(held)))
        train_source = common_pb2.CvatRef(url=export_zip.as_uri(), task_id=1)
        target = common_pb2.CvatRef(url=heldout.as_uri(), task_id=2)
        cvat = {}

    loop, result = await run_embedded(
        work,
        train_source,
        target,
        model_type=args.model,
        arguments=args.args,
        threshold=args.threshold,
        timeout=args.timeout,
        console=console,
        cvat=cvat,
        progress=args.progress,
    )

    converted, done = result["converted"], result["preannotated"]
    storage_root = work / "storage"
    console.print()
    console.print(
        f"[bold]done in {time.monotonic() - started:.0f} s[/bold] "
        f"(train loop {loop.timings['train_loop']:.0f} s, pre-annotation {loop.timings['annotate']:.0f} s)"
    )
    console.print(
        "validation metrics of the trained model: "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(converted.metrics.items()))
    )
    console.print(
        f"pre-annotated {done.frames_done} of {done.frames_total} frames, "
        f"{done.shapes_written} shapes at score >= {done.threshold:g}{_whose(args, converted)}, "
        f"{len(done.skipped)} skipped"
    )
    if truth is not None:
        predictions = heldout / "annotations" / "instances_default.json"
        scores = score.coco_map(truth, predictions)
        bundle = score.zip_folder(heldout, work / "heldout-preannotated-coco.zip")
        (work / "heldout-scores.json").write_text(json.dumps(scores, indent=2))
        console.print(
            f"[bold]held-out mAP@0.5: {scores['mAP@0.5']:.3f}[/bold] "
            f"(mAP {scores['mAP']:.3f}, whatever the class {scores['any_class_AP@0.5']:.3f}, "
            f"{scores['detections']} detections at score >= {done.threshold:g})"
        )
        console.print(
            f"of the boxes written, {scores['precision@0.5']:.0%} are right (IoU >= 0.5, "
            f"right label); they find {scores['recall@0.5']:.0%} of the {scores['objects']} "
            "held-out objects"
        )
        console.print(f"CVAT-importable COCO 1.0 of the predictions: {bundle}")
    model = converted.model
    console.print("artefacts:")
    console.print(f"  dataset      {storage_root / 'quickstart' / 'datasets'}")
    console.print(
        f"  model        {storage_root / 'quickstart' / 'models' / model.name / str(model.version)}"
        "  (checkpoints/, tensorboard/, classes.csv, metrics.json)"
    )
    console.print(f"  SavedModel   {storage_root / converted.serving_path}")
    console.print(f"  logs         {work / 'quickstart.log'}")
    return 0


def _whose(args: argparse.Namespace, converted) -> str:
    """Where the run's threshold came from, when ``--threshold`` did not set it."""
    if args.threshold:
        return ""
    if SUGGESTED_THRESHOLD in converted.metrics:
        return " (the model's suggested threshold)"
    return " (the service's default: the model suggests none)"
