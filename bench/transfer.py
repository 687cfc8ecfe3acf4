"""Proof that the pretrained path carries what was learned (issue 10): pretrained vs random start.

    .venv/bin/python bench/transfer.py                  # defaults: ~14 min on 2 cores
    .venv/bin/python bench/transfer.py --no-base        # without the backbone+decoder start
    .venv/bin/python bench/transfer.py --source-images 1000 --source-steps 3000 --target-steps 200

No machine here reaches the internet, so the real published weights cannot be
fetched. This proves the mechanism instead, in one embedded deployment (the
five services in this process, a memory bus, local storage):

1. *Source*: ssd-mobilenet-v2-coco is trained from random weights
   (``pretrained=false``) on a larger synthetic set of four classes (star,
   ring, cross, arrow: the outlines and fills of ``bench/datasets/mixed.py`` on
   the quickstart's square textured frames).
2. *Publish*: its checkpoint is served by a local HTTP server (stdlib, in a
   thread) under the published file names of the model type's weights entry
   (``preannotate.weights.source_for``), and the deployment's
   ``weights_mirror`` points there, as a site without internet access sets it.
   Storage holds no ``weights/`` yet: the first job with the default start
   pulls them (once per deployment; the server counts the requests).
3. *Target*: the quickstart's shapes (circle, square, triangle; other classes),
   ``--target-images`` of them (40: the exporter keeps about 10 % for
   validation), trained for the same steps with the same arguments from
   (a) random weights (``pretrained=false``), (b) the default start (the
   installed weights: the entry covers the backbone, so the trainer restores
   the backbone, ``imagenet-backbone``), and (c) unless ``--no-base``, the
   source model as base model (the seed's base-model path: other classes, so
   backbone and decoder are restored and the class heads start fresh). Each is
   converted and pre-annotates the same held-out frames (another seed) through
   the inference service; the quickstart's scorer gives mAP@0.5.
4. *Restored = checkpoint*: the model of (b) is built as the trainer builds it
   (its stored experiment, ``training.Session``) and initialised with the
   trainer's own restore (``initialisation.from_installed`` +
   ``Session.initialise``); every backbone variable is compared with the
   checkpoint's (``tf.train.load_checkpoint``). The same comparison before the
   restore (random weights) and on the decoder (not restored) shows the check
   can fail.

It prints one JSON line: the figures of each start, the differences, the steps,
the times, the restore check and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import io
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

MODEL = "ssd-mobilenet-v2-coco"
NAMESPACE = "transfer"
SOURCE_NAME = "source"
#: Arguments every training here shares; steps, warm-up and start are added.
COMMON = "batch_size={batch};input_size={size};initial_learning_rate={lr}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source-images", type=int, default=400, help="source frames (default 400)")
    p.add_argument("--source-steps", type=int, default=600, help="source steps (default 600)")
    p.add_argument("--target-images", type=int, default=40, help="target frames (default 40)")
    p.add_argument("--target-steps", type=int, default=600, help="steps per start (default 600)")
    p.add_argument("--held-out", type=int, default=60, help="held-out target frames (60)")
    p.add_argument("--input-size", type=int, default=128, help="frames and input size (px)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0, help="data seed (held-out: seed + 1000)")
    p.add_argument("--no-base", action="store_true", help="skip the base-model start (c)")
    p.add_argument("--threshold", type=float, default=0.05, help="lowest score written")
    p.add_argument("--workdir", type=Path, default=None, help="kept; default: a temporary one")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per job")
    return p.parse_args(argv)


def _arguments(args: argparse.Namespace, steps: int, *, pretrained: bool) -> str:
    text = COMMON.format(batch=args.batch_size, size=args.input_size, lr=args.learning_rate)
    text += f";epochs={steps};warmup_steps={min(100, steps // 5)};checkpoint_every={steps}"
    return text + ("" if pretrained else ";pretrained=false")


# --- data ------------------------------------------------------------------------


def _source_sample(rng, index: int, size: int):
    """A square frame (the quickstart's background) with 1-4 objects of mixed's classes."""
    from bench.datasets import mixed
    from preannotate.quickstart import shapes

    img = shapes._background(rng, size)
    found: list[shapes.Shape] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 5))):
        label = mixed.CLASSES[int(rng.integers(len(mixed.CLASSES)))]
        r = float(rng.uniform(size * 0.1, size * 0.22))
        cx, cy = (float(rng.uniform(r + 1, size - r - 1)) for _ in range(2))
        points = mixed._rotate(mixed._outline(label), cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        if mixed._overlaps(box, boxes):
            continue
        mixed._draw(img, rng, label, points, cx, cy, r)
        boxes.append(box)
        found.append(shapes.Shape(label, box, [round(v, 2) for p in points for v in p]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return shapes.Sample(f"source_{index:05d}.jpg", buf.getvalue(), size, size, found)


def _make_data(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np

    from bench.datasets import mixed
    from preannotate.quickstart import shapes

    rng = np.random.default_rng(args.seed + 500)
    size = args.input_size
    source = [_source_sample(rng, i, size) for i in range(args.source_images)]
    target = shapes.make_dataset(args.target_images, size=size, seed=args.seed)
    held = shapes.make_dataset(args.held_out, size=size, seed=args.seed + 1000)
    data = work / "data"
    truth = data / "heldout-truth.json"
    truth.parent.mkdir(parents=True, exist_ok=True)
    truth.write_text(json.dumps(shapes.coco_json(held, shapes.CLASSES)))
    shapes.write_images(held, data / "heldout-images")
    return {
        "source_zip": shapes.write_cvat_export(source, data / "source.zip", mixed.CLASSES),
        "target_zip": shapes.write_cvat_export(target, data / "target.zip", shapes.CLASSES),
        "truth": truth,
        "heldout_images": data / "heldout-images",
        "source_objects": sum(len(s.shapes) for s in source),
        "target_objects": sum(len(s.shapes) for s in target),
        "held_out_objects": sum(len(s.shapes) for s in held),
    }


# --- the mirror ---------------------------------------------------------------------


class Mirror:
    """A stdlib HTTP server in a thread serving one folder; it counts the GETs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw) -> None:
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *a) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/weights"

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _publish(storage, checkpoint_key: str, mirror: Path) -> list[str]:
    """The source model's checkpoint, under the published names of the model's weights entry."""
    from preannotate import layout
    from preannotate.weights import source_for

    entry = source_for(MODEL)
    stored = layout.require_checkpoint(storage, checkpoint_key)
    local = layout.download_checkpoint(storage, stored, mirror / "download")
    names = [entry.file_name, *entry.data_files]
    shards = sorted(p.name for p in local.parent.glob(local.name + ".data-*"))
    if len(shards) != len(names) - 1:
        raise SystemExit(f"the source checkpoint has {len(shards)} shards; the entry names {names}")
    folder = mirror / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(local.with_name(local.name + ".index"), folder / names[0])
    for shard, name in zip(shards, names[1:], strict=True):
        shutil.copy(local.parent / shard, folder / name)
    return names


# --- jobs through the deployment ----------------------------------------------------


async def _run_job(runtime, console, publish, job_id: str, topic: str, timeout: float, title: str):
    """Publish one request (``publish()``), follow its status until the event on ``topic``
    names it (a job that ends otherwise raises)."""
    from preannotate.errors import FailedPrecondition
    from preannotate.quickstart.flow import _first, follow
    from preannotate.status import stage_name
    from preannotate.v1 import events_pb2

    consumer = runtime.bus.consumer([topic], None, from_beginning=False)
    await consumer.start()
    try:
        await publish()
        event = asyncio.ensure_future(_first(consumer, job_id, timeout))
        watch = asyncio.ensure_future(follow(runtime, job_id, console, title))
        await asyncio.wait({event, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not event.done():
            status = watch.result()
            if status.state != events_pb2.JOB_STATE_SUCCEEDED:
                event.cancel()
                raise FailedPrecondition(
                    f"job {job_id} ended {events_pb2.JobState.Name(status.state)} at "
                    f"{stage_name(status.stage)}: {status.message}"
                )
        found = await event
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        return found
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def _train(runtime, console, *, name: str, arguments: str, dataset: Path, base: str,
                 timeout: float, until: str = "model.converted"):  # fmt: skip
    """Train (export, training, conversion when ``until`` is model.converted); the event."""
    from preannotate import events, topics
    from preannotate.v1 import common_pb2, events_pb2

    job_id = f"tr-{name}-{uuid.uuid4().hex[:6]}"
    request = events_pb2.TaskAnnotated(
        job_id=job_id,
        namespace=NAMESPACE,
        cvat=common_pb2.CvatRef(url=dataset.as_uri(), task_id=1),
        trigger="bench",
        requested_by="bench/transfer.py",
    )
    request.training.model_type = MODEL
    request.training.arguments = arguments
    request.training.model_name = name
    if base:
        request.training.base_model.name = base
    request.requested_at.GetCurrentTime()

    def publish():
        return events.publish(runtime.bus, topics.TASK_ANNOTATED, request, source="bench")

    return await _run_job(runtime, console, publish, job_id, until, timeout, name)


async def _annotate(runtime, console, model, folder: Path, threshold: float, timeout: float):
    """Pre-annotate the frames of ``folder`` (a CVAT COCO layout) with ``model``."""
    from preannotate import events, topics
    from preannotate.v1 import common_pb2, events_pb2

    job_id = f"an-{model.name}-{uuid.uuid4().hex[:6]}"
    ask = events_pb2.AnnotationRequested(
        job_id=job_id,
        namespace=NAMESPACE,
        cvat=common_pb2.CvatRef(url=folder.as_uri(), task_id=2),
        model=model,
        threshold=threshold,
        mode=events_pb2.ANNOTATE_MODE_REPLACE,
        trigger="bench",
    )

    def publish():
        return events.publish(runtime.bus, topics.ANNOTATION_REQUESTED, ask, source="bench")

    await _run_job(runtime, console, publish, job_id, topics.TASK_PREANNOTATED, timeout, "held-out")


async def _start(runtime, console, args, data: dict, work: Path, *, name, arguments, base=""):
    """One target start: train, pre-annotate the held-out frames, score."""
    from preannotate import layout
    from preannotate.quickstart import score

    t0 = time.monotonic()
    converted = await _train(
        runtime, console, name=name, arguments=arguments, dataset=data["target_zip"], base=base,
        timeout=args.timeout,
    )  # fmt: skip
    trained = time.monotonic() - t0
    folder = work / "heldout" / name
    shutil.copytree(data["heldout_images"], folder / "images" / "default")
    await _annotate(runtime, console, converted.model, folder, args.threshold, args.timeout)
    scores = score.coco_map(data["truth"], folder / "annotations" / "instances_default.json")
    _, manifest = layout.resolve(runtime.storage, NAMESPACE, name, converted.model.version)
    return {
        "init": manifest["init"],
        "steps": manifest["steps"],
        "mAP@0.5": round(scores["mAP@0.5"], 4),
        "mAP": round(scores["mAP"], 4),
        "detections": scores["detections"],
        "val_mAP@0.5": round(float(converted.metrics.get("mAP@0.5", -1.0)), 4),
        "train_convert_s": round(trained, 1),
        "total_s": round(time.monotonic() - t0, 1),
        "version": converted.model.version,
    }


def _settings(work: Path, mirror_url: str, services: tuple[str, ...]) -> list:
    from preannotate.cli.up import embedded_settings
    from preannotate.quickstart.embedded import work_overrides

    overrides = {**work_overrides(work, NAMESPACE), "weights_mirror": mirror_url}
    every = embedded_settings(work / "storage", **overrides)
    return [(spec, settings) for spec, settings in every if spec.name in services]


@contextlib.asynccontextmanager
async def _runtime(work: Path, mirror_url: str, services: tuple[str, ...]):
    """The deployment's services in this process, on ``work/storage``."""
    from preannotate.bus import MemoryBus
    from preannotate.runner import Runtime

    runtime = Runtime(_settings(work, mirror_url, services), bus=MemoryBus())
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def _deployment(args: argparse.Namespace, work: Path, data: dict, mirror: Mirror) -> dict:
    """Pretrain (no converter: the source model is never served), publish, then the starts."""
    import logging

    from rich.console import Console

    from preannotate import layout, topics
    from preannotate.telemetry.logging import configure
    from preannotate.weights import WeightsStore

    console = Console(file=sys.stderr)
    # Markup before TensorFlow loads: rich imports its markup module lazily, and that
    # import fails on the progress thread once TensorFlow's lazy importer is in.
    console.print(f"[bold]mirror[/bold] {mirror.url}; logs in {work / 'transfer.log'}")
    log_file = open(work / "transfer.log", "a")  # noqa: SIM115 - the logs' stream from now on
    configure("transfer", "info", "json", stream=log_file)
    logging.captureWarnings(True)
    out: dict = {}
    try:
        t0 = time.monotonic()
        source_args = _arguments(args, args.source_steps, pretrained=False)
        async with _runtime(work, mirror.url, ("gateway", "exporter", "trainer")) as runtime:
            trained = await _train(
                runtime, console, name=SOURCE_NAME, arguments=source_args,
                dataset=data["source_zip"], base="", timeout=args.timeout,
                until=topics.MODEL_TRAINED,
            )  # fmt: skip
        storage = runtime.storage
        _, manifest = layout.resolve(storage, NAMESPACE, SOURCE_NAME, trained.model.version)
        out["source"] = {
            "args": source_args,
            "steps": manifest["steps"],
            "val_mAP@0.5": round(float(trained.metrics.get("mAP@0.5", -1.0)), 4),
            "train_s": round(time.monotonic() - t0, 1),
        }
        out["published"] = _publish(storage, manifest["checkpoint"], mirror.folder)
        out["weights_before"] = storage.list("weights/")

        target_args = _arguments(args, args.target_steps, pretrained=True)
        out["target_args"] = target_args
        every = ("gateway", "exporter", "trainer", "converter", "inference")
        async with _runtime(work, mirror.url, every) as runtime:
            out["random"] = await _start(
                runtime, console, args, data, work, name="random",
                arguments=_arguments(args, args.target_steps, pretrained=False),
            )  # fmt: skip
            out["pretrained"] = await _start(
                runtime, console, args, data, work, name="pretrained", arguments=target_args
            )
            installed = WeightsStore(storage).installed(MODEL)
            out["installed"] = {
                "url": installed.url,
                "covers": installed.covers,
                "sha256": installed.sha256,
                "key": installed.key,
            }
            out["mirror_requests"] = list(mirror.requests)
            if not args.no_base:
                out["base"] = await _start(
                    runtime, console, args, data, work, name="base", arguments=target_args,
                    base=SOURCE_NAME,
                )  # fmt: skip
    finally:
        log_file.flush()
    return out


# --- restored = checkpoint ------------------------------------------------------------


def _compare(model, checkpoint: str, scratch: Path) -> dict[str, list[int]]:
    """Per part (backbone, decoder): [equal, compared] variables of ``model`` vs ``checkpoint``.

    ``model`` is saved as the trainer saves it (``tf.train.Checkpoint(model=...)``), so
    both files name each variable by the same object path (``model/backbone/...``).
    """
    import numpy as np
    import tensorflow as tf

    saved = tf.train.Checkpoint(model=model).write(str(scratch / "now"))
    ours, theirs = tf.train.load_checkpoint(saved), tf.train.load_checkpoint(checkpoint)
    names = set(theirs.get_variable_to_shape_map())
    counts: dict[str, list[int]] = {}
    for name in sorted(ours.get_variable_to_shape_map()):
        part = name.split("/")[1].lstrip("_") if name.startswith("model/") else ""
        if part not in ("backbone", "decoder") or not name.endswith("VARIABLE_VALUE"):
            continue
        pair = counts.setdefault(part, [0, 0])
        if name in names:
            pair[1] += 1
            pair[0] += int(np.array_equal(ours.get_tensor(name), theirs.get_tensor(name)))
    return counts


def _restore_check(work: Path, version: int, classes: list[str]) -> dict:
    """Build (b)'s model as the trainer does, restore as it does, compare with the checkpoint."""
    from preannotate.storage.local import LocalStorage
    from preannotate.vision import experiment as experiment_lib
    from preannotate.weights import WeightsStore
    from services.trainer import initialisation, training

    storage = LocalStorage(work / "storage")
    installed = WeightsStore(storage).installed(MODEL)
    scratch = work / "restore-check"
    spec = initialisation.from_installed(storage, installed, scratch / "cache")
    prefix = f"{NAMESPACE}/models/pretrained/{version}/"
    params = experiment_lib.load(storage.get(prefix + "experiment.yaml").decode())
    session = training.Session(params, training.make_strategy(1), scratch / "model")
    before = _compare(session.model, spec.checkpoint, scratch / "before")
    session.initialise(spec)
    after = _compare(session.model, spec.checkpoint, scratch / "after")
    return {
        "start": spec.label,
        "modules": list(spec.modules),
        "backbone_equal_after_restore": after.get("backbone"),
        "backbone_equal_before_restore": before.get("backbone"),
        "decoder_equal_after_restore": after.get("decoder"),
    }


def _measure(args: argparse.Namespace, work: Path) -> dict:
    from preannotate.quickstart import shapes

    print(f"making {args.source_images} source, {args.target_images} target and "
          f"{args.held_out} held-out frames", file=sys.stderr)  # fmt: skip
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    data = _make_data(args, work)
    (work / "mirror").mkdir(parents=True, exist_ok=True)
    with Mirror(work / "mirror") as mirror:
        out = asyncio.run(_deployment(args, work, data, mirror))
    check = _restore_check(work, out["pretrained"]["version"], list(shapes.CLASSES))
    starts = [k for k in ("random", "pretrained", "base") if k in out]
    figures = {k: out[k]["mAP@0.5"] for k in starts}
    result = {
        "model": MODEL,
        "mAP@0.5": figures,
        "pretrained_minus_random": round(figures["pretrained"] - figures["random"], 4),
        **(
            {"base_minus_random": round(figures["base"] - figures["random"], 4)}
            if "base" in figures
            else {}
        ),
        "target_steps": args.target_steps,
        "source": {
            "images": args.source_images,
            "objects": data["source_objects"],
            **out["source"],
        },
        "target": {"images": args.target_images, "objects": data["target_objects"]},
        "held_out": {"images": args.held_out, "objects": data["held_out_objects"]},
        "target_args": out["target_args"],
        "starts": {k: out[k] for k in starts},
        "weights": {
            "published_as": out["published"],
            "in_storage_before_first_job": out["weights_before"],
            "mirror_requests": out["mirror_requests"],
            "installed": out["installed"],
        },
        "restore_check": check,
        "threshold": args.threshold,
        "total_s": round(time.monotonic() - started, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = _parse(argv)
    if args.workdir is not None:
        if args.workdir.exists() and any(args.workdir.iterdir()):
            raise SystemExit(f"--workdir {args.workdir} is not empty: name a new folder")
        args.workdir.mkdir(parents=True, exist_ok=True)
        out = _measure(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
            out = _measure(args, Path(tmp))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ from a checkout
    sys.exit(main())
