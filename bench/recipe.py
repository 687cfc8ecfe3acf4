"""The quickstart's training recipe on data it was not tuned on: held-out mAP@0.5.

    .venv/bin/python -m bench.recipe                                   # mixed data, quickstart args
    .venv/bin/python -m bench.recipe --args "epochs=1500;...;input_size=256;pretrained=false"
    .venv/bin/python -m bench.recipe --data shapes                     # the quickstart's own data

It makes a training set and a held-out set (``--data mixed``: bench/datasets/mixed.py,
mixed sizes, small and border-cut objects, empty frames, JPEG and PNG; ``--data
shapes``: the quickstart's squares of shapes), the held-out one from another
seed, and runs the quickstart's loop on them in one process (export, training,
conversion, pre-annotation of the held-out frames through the exported model,
``preannotate.quickstart.embedded``). It prints one JSON line: the data, the
arguments, the times, held-out mAP@0.5, mAP and the small objects' AP (COCO's
small: under 32² px) at IoU 0.5 and over 0.5:0.95, and the machine's load average
(the times move with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from preannotate.cli.quickstart import DEFAULT_ARGS

MODEL = "ssd-mobilenet-v2-coco"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("mixed", "shapes"), default="mixed")
    p.add_argument("--train", type=int, default=300, help="training frames (default 300)")
    p.add_argument("--held-out", type=int, default=100, help="held-out frames (default 100)")
    p.add_argument("--seed", type=int, default=0, help="training seed; held-out: seed + 1000")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--args", default=DEFAULT_ARGS, help="training arguments (the quickstart's)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.25,
        help="lowest score written (0: the trained model's suggested threshold)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="kept; default: a temporary one")
    p.add_argument("--timeout", type=float, default=7200)
    return p.parse_args(argv)


def _samples(args: argparse.Namespace):
    if args.data == "mixed":
        from bench.datasets import mixed

        train = mixed.make_dataset(args.train, seed=args.seed)
        held = mixed.make_dataset(args.held_out, seed=args.seed + 1000)
        return train, held, mixed.CLASSES
    from preannotate.quickstart import shapes

    train = shapes.make_dataset(args.train, size=128, seed=args.seed)
    held = shapes.make_dataset(args.held_out, size=128, seed=args.seed + 1000)
    return train, held, shapes.CLASSES


async def _measure(args: argparse.Namespace, work: Path) -> dict:
    from rich.console import Console

    from preannotate.quickstart import score, shapes
    from preannotate.quickstart.embedded import run_embedded
    from preannotate.v1 import common_pb2

    console = Console(file=sys.stderr)
    # Prints markup before TensorFlow loads: rich imports its markup module lazily, and
    # that import fails on the progress thread once TensorFlow's lazy importer is in.
    console.print(f"[bold]making[/bold] {args.train} + {args.held_out} frames of {args.data}")
    train, held, classes = _samples(args)
    export_zip = shapes.write_cvat_export(train, work / "data" / "train-coco.zip", classes)
    heldout = work / "heldout"
    shapes.write_images(held, heldout / "images" / "default")
    truth = work / "data" / "heldout-truth.json"
    truth.write_text(json.dumps(shapes.coco_json(held, classes)))

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    loop, result = await run_embedded(
        work,
        common_pb2.CvatRef(url=export_zip.as_uri(), task_id=1),
        common_pb2.CvatRef(url=heldout.as_uri(), task_id=2),
        model_type=args.model,
        arguments=args.args,
        threshold=args.threshold,
        timeout=args.timeout,
        console=console,
        model_name=f"recipe-{args.data}",
    )
    total = time.monotonic() - started
    scores = score.coco_map(truth, heldout / "annotations" / "instances_default.json")
    small = sum(1 for s in held for shape in s.shapes if shape.box[2] * shape.box[3] < 32**2)
    return {
        "data": args.data,
        "train_images": len(train),
        "held_out_images": len(held),
        "held_out_objects": sum(len(s.shapes) for s in held),
        "held_out_small_objects": small,
        "model": args.model,
        "args": args.args,
        "threshold": round(result["preannotated"].threshold, 4),
        "train_loop_s": round(loop.timings["train_loop"], 1),
        "annotate_s": round(loop.timings["annotate"], 1),
        "total_s": round(total, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "val_metrics": {k: round(v, 4) for k, v in result["converted"].metrics.items()},
        **{k: rounded(v) for k, v in scores.items()},
    }


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = _parse(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        out = asyncio.run(_measure(args, args.workdir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="recipe-") as tmp:
            out = asyncio.run(_measure(args, Path(tmp)))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
