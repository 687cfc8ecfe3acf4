"""Training throughput of ssd-mobilenet-v2-coco: the real input pipeline against in-memory batches.

    .venv/bin/python -m bench.trainer.throughput          # catalog: 256 px, batch 24 (~3 min)
    .venv/bin/python -m bench.trainer.throughput --steps 10 --input-size 128 --batch-size 8
    .venv/bin/python -m bench.trainer.throughput --num-clones 4  # on a machine with 4 GPUs
    .venv/bin/python -m bench.trainer.throughput --s3-endpoint http://127.0.0.1:9000
    .venv/bin/python -m bench.trainer.throughput --precision bfloat16  # Keras mixed precision

It writes a dataset in the exporter's layout into storage (a local folder, or
an S3 bucket with ``--s3-endpoint``), downloads it the way the trainer does
(``services.trainer.dataset.fetch``), builds the model the way the trainer does
(``configs.build_experiment`` + ``training.Session``), and then, in the same
process and with the same compiled step, times

- ``pipeline``: batches from the TFRecords through Model Garden's input reader
  (decode, augment, anchor labels), as training reads them;
- ``synthetic``: the first batch of that pipeline held in memory and repeated,
  so the step never waits for input.

The two alternate in blocks after a warm-up, so drift in the machine's load
hits both. The ratio pipeline / synthetic should be at least 0.95: below that
the input pipeline, not the model, limits training. Peak RSS is the process's.

``--precision`` sets Model Garden's ``runtime.mixed_precision_dtype`` and the
Keras policy it implies (``bfloat16``: layers compute in bfloat16, variables stay
float32). The trainer itself trains in float32; this measures whether the
other is worth it on the machine at hand (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

MODEL = "ssd-mobilenet-v2-coco"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--blocks", type=int, default=2, help="alternations of the two modes")
    p.add_argument("--input-size", type=int, default=256, help="pixels, a multiple of 128")
    p.add_argument(
        "--batch-size", type=int, default=24, help="images per step over all clones (catalog: 24)"
    )
    p.add_argument("--num-clones", type=int, default=1, help="GPUs (1 on a CPU)")
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="compute dtype of the layers (default float32, as the trainer)",
    )
    p.add_argument("--images", type=int, default=64, help="training images in the dataset")
    p.add_argument("--image-size", type=int, default=320, help="pixels of the stored images")
    p.add_argument("--s3-endpoint", default="", help="use this S3 server instead of a folder")
    p.add_argument("--s3-bucket", default="preannotate-bench")
    p.add_argument("--work-dir", default="", help="default: a temporary folder")
    p.add_argument("--json", default="", help="also write the results to this file")
    return p.parse_args(argv)


def _storage(args: argparse.Namespace, work: Path):
    from preannotate.storage import LocalStorage, S3Storage

    if args.s3_endpoint:
        return S3Storage(
            bucket=args.s3_bucket,
            endpoint_url=args.s3_endpoint,
            access_key="bench",
            secret_key="bench",
            create_bucket=True,
        )
    return LocalStorage(work / "storage")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-trainer-"))
    storage = _storage(args, work)

    from tests.trainer.datasets import write_dataset

    started = time.perf_counter()
    data = write_dataset(
        storage,
        job_id="bench",
        train_images=args.images,
        val_images=1,
        size=args.image_size,
        seed=1,
    )
    written = time.perf_counter() - started

    import tensorflow as tf

    from preannotate import catalog
    from preannotate.arguments import parse, resolve
    from services.trainer import dataset, training
    from services.trainer.configs import ExperimentInputs, build_experiment

    started = time.perf_counter()
    local = dataset.fetch(storage, data.prefix, work / "dataset")
    fetched = time.perf_counter() - started

    entry = catalog.get(MODEL)
    total = args.warmup + 2 * args.steps
    text = (
        f"epochs={total};batch_size={args.batch_size};input_size={args.input_size};"
        f"warmup_steps=0;num_clones={args.num_clones};eval=false;pretrained=false"
    )
    gpus = len(tf.config.list_physical_devices("GPU"))
    plan = resolve(parse(text, entry, machine_gpus=gpus), entry, args.images)
    params = build_experiment(
        entry,
        plan,
        ExperimentInputs(
            num_classes=len(data.classes) + 1,
            train_pattern=local.train_pattern,
            val_pattern=local.val_pattern,
            annotation_file=None,
            regenerate_source_id=False,
            eval_batch_size=plan.num_clones,
            val_images=1,
            checkpoint_every=total,
        ),
    )
    if args.precision != "float32":
        from official.modeling import performance

        from preannotate.vision import experiment

        params = experiment.editable_copy(params)
        params.runtime.mixed_precision_dtype = args.precision
        params.lock()
        performance.set_mixed_precision_policy(args.precision)
    strategy = training.make_strategy(plan.num_clones)
    session = training.Session(params, strategy, work / "model")
    task, train_data = session.task, params.task.train_data

    real = iter(
        strategy.distribute_datasets_from_function(lambda ctx: task.build_inputs(train_data, ctx))
    )
    synthetic = iter(
        strategy.distribute_datasets_from_function(
            lambda ctx: task.build_inputs(train_data, ctx).take(1).cache().repeat()
        )
    )
    step = session._make_step()  # the trainer's own step function

    started = time.perf_counter()
    for _ in range(args.warmup):  # traces once; both iterators share the element spec
        float(step(real))
    float(step(synthetic))
    warm = time.perf_counter() - started

    timed = {"pipeline": 0.0, "synthetic": 0.0}
    steps = {"pipeline": 0, "synthetic": 0}
    per_block = [
        args.steps // args.blocks + (i < args.steps % args.blocks) for i in range(args.blocks)
    ]
    for count in per_block:
        for mode, iterator in (("pipeline", real), ("synthetic", synthetic)):
            started = time.perf_counter()
            for _ in range(count):
                float(step(iterator))
            timed[mode] += time.perf_counter() - started
            steps[mode] += count

    ips = {m: steps[m] * plan.batch_size / timed[m] for m in timed}
    return {
        "model": MODEL,
        "device": f"{plan.num_clones} GPU(s)" if gpus else "CPU",
        "gpus_visible": gpus,
        "num_clones": plan.num_clones,
        "precision": args.precision,
        "input_size": plan.input_size,
        "batch_size": plan.batch_size,
        "steps_per_mode": args.steps,
        "images_per_second": ips,
        "ratio": ips["pipeline"] / ips["synthetic"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_mb_end": _rss_mb(),
        "dataset_write_s": written,
        "dataset_fetch_s": fetched,
        "warmup_s": warm,
        "storage": "s3" if args.s3_endpoint else "local folder",
    }


def _table(result: dict) -> str:
    ips = result["images_per_second"]
    rows = [
        ("model", result["model"]),
        ("device", f"{result['device']} (clones {result['num_clones']})"),
        ("input size / batch", f"{result['input_size']} px / {result['batch_size']}"),
        ("precision", result["precision"]),
        ("steps per mode", str(result["steps_per_mode"])),
        ("pipeline images/s", f"{ips['pipeline']:.2f}"),
        ("synthetic images/s", f"{ips['synthetic']:.2f}"),
        ("ratio (target >= 0.95)", f"{result['ratio']:.3f}"),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB"),
        ("dataset from storage", f"{result['dataset_fetch_s']:.2f} s ({result['storage']})"),
        ("warm-up (trace + steps)", f"{result['warmup_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = run(args)
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
