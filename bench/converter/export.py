"""Export time and SavedModel size of every catalog model at its catalog input size.

Each model is built untrained (Model Garden's random initialisation) from the
trainer's own experiment builder (``services.trainer.configs``), so it is the
exact model a job trains; it is checkpointed, and then exported the way the
converter exports it (``services.converter.export.save_savedmodel``: both
signatures, classes.csv asset). Every model runs in a fresh process, so its
memory and import time are its own.

    .venv/bin/python bench/converter/export.py                    # all but frcnn-nas-coco
    .venv/bin/python bench/converter/export.py --models all       # every model (~15 min)
    .venv/bin/python bench/converter/export.py --models ssd-mobilenet-v2-coco,maskrcnn
    .venv/bin/python bench/converter/export.py --full --images 2  # the whole converter job
    .venv/bin/python bench/converter/export.py --layout --models ssd-mobilenet-v2-coco,maskrcnn

``--full`` runs the converter's handler instead (reference outputs, export,
fresh-process check of both signatures on synthetic images, upload to a local
storage) and reports its steps. ``--layout`` compares, in one process, the
SavedModel the converter writes (``services.converter.module.saved_root``: the
variables, the asset and the signatures) with the baseline of saving the whole
export module (its Keras model too): save and load seconds and bytes of each. ``--json FILE`` keeps the rows. The default
run leaves out frcnn-nas-coco (NASNet-A Large: about 4.5 of its 14 minutes on
two busy cores) to stay near 10 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MB = 1 << 20
#: Left out of the default run for time; ``--models all`` or its name includes it.
SLOW = ("frcnn-nas-coco",)
CLASSES = ("a", "b", "c")
RESULT = "RESULT "


def _experiment(name: str, input_size: int | None):
    """The catalog model's experiment config, as the trainer builds it for a tiny dataset."""
    from preannotate import arguments, catalog
    from services.trainer.configs import ExperimentInputs, build_experiment

    entry = catalog.get(name)
    text = f"input_size={input_size}" if input_size else ""
    args = arguments.parse(text, entry, machine_gpus=max(entry.min_gpus, 1))
    plan = arguments.resolve(args, entry, dataset_images=10)
    inputs = ExperimentInputs(
        num_classes=len(CLASSES) + 1,
        train_pattern="unused-train-*.tfrecord",
        val_pattern="unused-val-*.tfrecord",
        annotation_file=None,
        regenerate_source_id=False,
        eval_batch_size=1,
        val_images=0,
        checkpoint_every=1000,
    )
    return entry, plan, build_experiment(entry, plan, inputs)


def _checkpointed(params, folder: Path) -> tuple[Path, int]:
    """Build the model, create every variable, and write its checkpoint; returns (path, params)."""
    import tensorflow as tf
    from official.core import task_factory
    from official.vision.serving import detection

    model = task_factory.get_task(params.task).build_model()
    size = [int(v) for v in params.task.model.input_size[:2]]
    module = detection.DetectionModule(
        params=params.replace(), batch_size=1, input_image_size=size, model=model
    )
    module.serve(tf.zeros([1, *size, 3], tf.uint8))  # heads are built on their first call
    count = int(sum(v.shape.num_elements() for v in model.variables))
    path = Path(tf.train.Checkpoint(model=model).write(str(folder / "ckpt-1")))
    del module, model
    gc.collect()
    return path, count


def _files(params, folder: Path) -> tuple[Path, Path]:
    from preannotate.vision import experiment

    experiment_path = experiment.save(params, folder / "experiment.yaml")
    classes = folder / "classes.csv"
    classes.write_text("id,name\n" + "".join(f"{i},{c}\n" for i, c in enumerate(CLASSES, 1)))
    return experiment_path, classes


def run_export(name: str, input_size: int | None, work: Path) -> dict[str, Any]:
    from services.converter import export, publish

    started = time.monotonic()
    entry, plan, params = _experiment(name, input_size)
    checkpoint, count = _checkpointed(params, work / "ckpt")
    built = time.monotonic() - started
    _experiment_path, classes = _files(params, work)
    started = time.monotonic()
    facts = export.save_savedmodel(params, checkpoint, classes, work / "export")
    total = time.monotonic() - started
    sizes = publish.tree_sizes(work / "export")
    return {
        "model": name,
        "backbone": entry.backbone,
        "input_size": plan.input_size,
        "parameters": count,
        "build_seconds": round(built, 1),
        "export_seconds": round(total, 1),
        "trace_seconds": facts["trace_seconds"],
        "save_seconds": facts["save_seconds"],
        "savedmodel_bytes": sizes["total"],
        "graph_bytes": sizes["saved_model_pb"],
        "variables_bytes": sizes["variables"],
    }


def run_layouts(name: str, input_size: int | None, work: Path) -> dict[str, Any]:
    """Save one restored export module both ways and load each back (same process)."""
    import tensorflow as tf

    from services.converter import export, publish
    from services.converter import module as serving

    _entry, plan, params = _experiment(name, input_size)
    checkpoint, count = _checkpointed(params, work / "ckpt")
    _experiment_path, classes = _files(params, work)
    module = serving.ServingModule(
        params, input_image_size=export.input_size(params), classes_csv=str(classes)
    )
    signatures = module.signatures()
    export._restore(module.model, checkpoint)
    row: dict[str, Any] = {"model": name, "input_size": plan.input_size, "parameters": count}
    for layout, root in (("module", module), ("saved_root", serving.saved_root(module))):
        out = work / layout
        started = time.monotonic()
        tf.saved_model.save(root, str(out), signatures=signatures)
        saved = time.monotonic()
        loaded = tf.saved_model.load(str(out))
        row[layout] = {
            "save_seconds": round(saved - started, 1),
            "load_seconds": round(time.monotonic() - saved, 1),
            "bytes": publish.tree_sizes(out)["total"],
        }
        del loaded
        gc.collect()
    for figure in ("save_seconds", "load_seconds", "bytes"):
        row[f"{figure}_ratio"] = round(row["saved_root"][figure] / row["module"][figure], 2)
    return row


class _Ctx:
    """The least a handler needs from the runner's context."""

    service = "converter-bench"

    def __init__(self, storage) -> None:
        import structlog

        self.storage, self.bus, self.record = storage, None, None
        self.log = structlog.get_logger()

    async def report(self, **kwargs) -> None:
        print(f"  {kwargs.get('message', '')}", file=sys.stderr, flush=True)

    def cancel_requested(self) -> bool:
        return False

    def stop_requested(self) -> bool:
        return False


def run_full(name: str, input_size: int | None, work: Path, images: int) -> dict[str, Any]:
    from preannotate import keys
    from preannotate.storage import LocalStorage, PrefixWriter, read_manifest
    from preannotate.v1 import common_pb2, events_pb2
    from services.converter.handlers import handle_model_trained
    from services.converter.settings import ConverterSettings

    started = time.monotonic()
    entry, plan, params = _experiment(name, input_size)
    checkpoint, count = _checkpointed(params, work / "ckpt")
    experiment_path, classes = _files(params, work)
    built = time.monotonic() - started
    storage = LocalStorage(work / "storage")
    prefix = keys.model_prefix("bench", "m", 1)
    with PrefixWriter(storage, prefix) as out:
        for path in sorted(checkpoint.parent.glob(checkpoint.name + ".*")):
            out.upload(f"checkpoints/{path.name}", path)
        out.upload("experiment.yaml", experiment_path)
        out.upload("classes.csv", classes)
        out.commit({"kind": "model"})
    msg = events_pb2.ModelTrained(
        job_id="bench",
        namespace="bench",
        model=common_pb2.ModelRef(namespace="bench", name="m", version=1),
        model_type=name,
        model_prefix=prefix,
        checkpoint=prefix + "checkpoints/ckpt-1",
        classes=list(CLASSES),
        input_size=plan.input_size,
    )
    settings = ConverterSettings(convert_work_dir=work / "convert", convert_parity_images=images)
    started = time.monotonic()
    asyncio.run(handle_model_trained(msg, _Ctx(storage), settings=settings))
    total = time.monotonic() - started
    manifest = read_manifest(storage, keys.serving_prefix("bench", "m", 1))
    timings = manifest["timings"]
    return {
        "model": name,
        "backbone": entry.backbone,
        "input_size": plan.input_size,
        "parameters": count,
        "build_seconds": round(built, 1),
        "job_seconds": round(total, 1),
        "reference_seconds": timings["reference_seconds"],
        "export_seconds": timings["export_seconds"],
        "load_seconds": timings["load_seconds"],
        "check_run_seconds": timings["check_run_seconds"],
        "savedmodel_bytes": manifest["sizes"]["total"],
        "graph_bytes": manifest["sizes"]["saved_model_pb"],
        "variables_bytes": manifest["sizes"]["variables"],
        "parity_detections": manifest["parity"]["detections"],
    }


def child(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    if args.full:
        row = run_full(args.child, args.input_size, work, args.images)
    elif args.layout:
        row = run_layouts(args.child, args.input_size, work)
    else:
        row = run_export(args.child, args.input_size, work)
    # With --full the export and check run in worker processes: count the largest of all.
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    row["peak_rss_mb"] = round(peak / 1024)
    print(RESULT + json.dumps(row), flush=True)
    return 0


def _measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--workdir",
        str(work),
    ]
    if args.input_size:
        command += ["--input-size", str(args.input_size)]
    if args.full:
        command += ["--full", "--images", str(args.images)]
    if args.layout:
        command += ["--layout"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"over {args.timeout} s"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            row = json.loads(line[len(RESULT) :])
            row["process_seconds"] = round(time.monotonic() - started, 1)
            return row
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    return {"model": name, "error": f"exit {proc.returncode}: {tail}"}


def layout_table(rows: list[dict[str, Any]]) -> str:
    head = ["model", "input", "save s (module / saved_root)", "load s", "MB", "load ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | error: {row['error'].splitlines()[-1]} |")
            continue
        before, after = row["module"], row["saved_root"]
        cells = [
            row["model"],
            row["input_size"],
            f"{before['save_seconds']} / {after['save_seconds']}",
            f"{before['load_seconds']} / {after['load_seconds']}",
            f"{before['bytes'] / MB:.1f} / {after['bytes'] / MB:.1f}",
            row["load_seconds_ratio"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], full: bool) -> str:
    head = [
        "model",
        "backbone",
        "input",
        "params M",
        "export s",
        "SavedModel MB",
        "graph MB",
        "variables MB",
        "peak RSS MB",
        "process s",
    ]
    if full:
        head[4:5] = ["job s", "reference s", "export s", "load s", "check s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | error: {row['error'].splitlines()[-1]} |")
            continue
        timing = (
            [
                row["job_seconds"],
                row["reference_seconds"],
                row["export_seconds"],
                row["load_seconds"],
                row["check_run_seconds"],
            ]
            if full
            else [row["export_seconds"]]
        )
        cells = [
            row["model"],
            row["backbone"],
            row["input_size"],
            f"{row['parameters'] / 1e6:.1f}",
            *timing,
            f"{row['savedmodel_bytes'] / MB:.0f}",
            f"{row['graph_bytes'] / MB:.1f}",
            f"{row['variables_bytes'] / MB:.0f}",
            row["peak_rss_mb"],
            row["process_seconds"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated catalog names, or 'all' (default: all but " + ", ".join(SLOW) + ")",
    )
    parser.add_argument("--input-size", type=int, default=0, help="override the catalog's size")
    parser.add_argument("--full", action="store_true", help="run the whole converter job")
    parser.add_argument("--images", type=int, default=2, help="parity images with --full")
    parser.add_argument(
        "--layout", action="store_true", help="saved_root against saving the whole module"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from preannotate import catalog

    names = [
        n.strip() for n in args.models.split(",") if n.strip()
    ] or catalog.default_catalog().names()
    for name in names:
        catalog.get(name)  # an unknown name fails before any work, listing the names
    rows = []
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        row = _measure(name, args)
        print(f"  {row}", file=sys.stderr, flush=True)
        rows.append(row)
    print(layout_table(rows) if args.layout else table(rows, args.full))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
