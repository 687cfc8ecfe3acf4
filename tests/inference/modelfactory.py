"""Tiny real SavedModels for the inference tests, exported the way the converter does.

``build(kind, out_base)`` trains a small official.vision model for a few hundred
steps on an easy synthetic set (the CVAT stand-in's circles and squares on
noise, ``make_shapes_dataset``) and exports Model Garden's stock
``DetectionModule``, saved the way the converter saves, into ``<out_base>/1/``
(TF Serving layout): ``serving_default`` takes encoded images, ``image_tensor``
takes a uint8 batch, and ``assets/classes.csv`` lists the classes. ``kind`` is ``retinanet`` (RetinaNet, MobileNetV2 backbone, boxes
normalised) or ``maskrcnn`` (Mask R-CNN, MobileNetV2 backbone, masks; boxes in
pixels of the resized input, as Model Garden exports them).

Run as ``python -m tests.inference.modelfactory KIND OUT_BASE`` so the training
happens in its own process; ``cached(kind)`` does that once and keeps the result
under the system's temp folder, keyed by this file's content.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests import prebuild

CLASSES = ("circle", "square")
INPUT_SIZE = 128
SIZES = ((128, 128), (160, 120), (120, 160))
STEPS = {"retinanet": 900, "maskrcnn": 120}
TENSOR_SIGNATURE = "image_tensor"
TRAIN_SEED = 1000
#: A build must score at least this on each of its first training frames (the tests
#: run at thresholds from 0.05 to 0.5; tiny models score low).
MIN_SCORE = 0.1
CHECK_FRAMES = 4
ATTEMPTS = 3


def training_set(count: int, seed: int = TRAIN_SEED):
    """``[(jpeg, width, height, [(class_id, x1, y1, x2, y2, mask)])]`` from the CVAT
    stand-in's shapes generator (the same drawing the annotate tests use)."""
    from tests.standins.cvat import decode_cvat_mask, make_shapes_dataset

    out = []
    per_size = -(-count // len(SIZES))
    for k, (width, height) in enumerate(SIZES):
        images, shapes = make_shapes_dataset(
            per_size, size=(width, height), classes=CLASSES, seed=seed + k, kind="mask"
        )
        objects: dict[int, list] = {i: [] for i in range(len(images))}
        for shape in shapes:
            mask = decode_cvat_mask(shape["points"], width, height)
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            objects[shape["frame"]].append((CLASSES.index(shape["label"]) + 1, *box, mask))
        out += [(data, width, height, objects[i]) for i, (_n, data) in enumerate(images)]
    return out[:count]


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_tfrecord(path: Path, count: int, masks: bool) -> None:
    import tensorflow as tf

    def feature(values, kind):
        if kind == "bytes":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if kind == "float":
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, (jpeg, width, height, objects) in enumerate(training_set(count)):
            feats = {
                "image/encoded": feature([jpeg], "bytes"),
                "image/height": feature([height], "int"),
                "image/width": feature([width], "int"),
                "image/source_id": feature([str(i).encode()], "bytes"),
                "image/object/bbox/xmin": feature([o[1] / width for o in objects], "float"),
                "image/object/bbox/xmax": feature([o[3] / width for o in objects], "float"),
                "image/object/bbox/ymin": feature([o[2] / height for o in objects], "float"),
                "image/object/bbox/ymax": feature([o[4] / height for o in objects], "float"),
                "image/object/class/label": feature([o[0] for o in objects], "int"),
                "image/object/area": feature(
                    [float((o[3] - o[1]) * (o[4] - o[2])) for o in objects], "float"
                ),
                "image/object/is_crowd": feature([0 for _ in objects], "int"),
            }
            if masks:  # PNG per instance with values 0/1, as the decoder expects
                feats["image/object/mask"] = feature(
                    [encode(o[5].astype(np.uint8)) for o in objects], "bytes"
                )
            example = tf.train.Example(features=tf.train.Features(feature=feats))
            writer.write(example.SerializeToString())


def _params(kind: str, train_path: Path, batch_size: int, steps: int, seed: int):
    from official.core import exp_factory
    from official.vision import registry_imports  # noqa: F401  (registers the experiments)

    common = {
        "runtime": {"mixed_precision_dtype": "float32", "enable_xla": False},
        "trainer": {
            "optimizer_config": {
                "optimizer": {"type": "sgd", "sgd": {"momentum": 0.9}},
                "learning_rate": {
                    "type": "cosine",
                    "cosine": {"initial_learning_rate": 0.03, "decay_steps": steps, "alpha": 0.05},
                },
                "warmup": {
                    "type": "linear",
                    "linear": {"warmup_steps": 30, "warmup_learning_rate": 0.002},
                },
            }
        },
    }
    data = {
        "input_path": str(train_path),
        "global_batch_size": batch_size,
        "is_training": True,
        "dtype": "float32",
        "shuffle_buffer_size": 64,
        "seed": seed,
        "deterministic": True,
        "parser": {"aug_rand_hflip": True},
    }
    if kind == "retinanet":
        params = exp_factory.get_exp_config("retinanet_mobile_coco")
        params.override(common, is_strict=False)
        params.override(
            {
                "task": {
                    "init_checkpoint": "",
                    "model": {
                        "num_classes": len(CLASSES) + 1,
                        "input_size": [INPUT_SIZE, INPUT_SIZE, 3],
                        "min_level": 3,
                        "max_level": 6,
                        "backbone": {
                            "type": "mobilenet",
                            "mobilenet": {"model_id": "MobileNetV2", "filter_size_scale": 0.5},
                        },
                        "decoder": {
                            "type": "fpn",
                            "fpn": {"num_filters": 64, "use_separable_conv": True},
                        },
                        "head": {"num_filters": 64, "use_separable_conv": True, "num_convs": 2},
                        "norm_activation": {"use_sync_bn": False, "activation": "relu6"},
                        "anchor": {"anchor_size": 3},
                        "detection_generator": {"max_num_detections": 20},
                    },
                    "train_data": data,
                    "export_config": {"output_normalized_coordinates": True},
                }
            },
            is_strict=False,
        )
    elif kind == "maskrcnn":
        params = exp_factory.get_exp_config("maskrcnn_mobilenet_coco")
        params.override(common, is_strict=False)
        params.override(
            {
                "task": {
                    "init_checkpoint": "",
                    "model": {
                        "num_classes": len(CLASSES) + 1,
                        "input_size": [INPUT_SIZE, INPUT_SIZE, 3],
                        "min_level": 3,
                        "max_level": 6,
                        "backbone": {
                            "type": "mobilenet",
                            "mobilenet": {"model_id": "MobileNetV2", "filter_size_scale": 0.5},
                        },
                        "norm_activation": {"use_sync_bn": False},
                        "roi_generator": {
                            "num_proposals": 64,
                            "test_num_proposals": 64,
                            "pre_nms_top_k": 256,
                            "test_pre_nms_top_k": 256,
                        },
                        "roi_sampler": {"num_sampled_rois": 32},
                        "mask_sampler": {"num_sampled_masks": 8},
                        "detection_generator": {"max_num_detections": 20},
                    },
                    "train_data": data,
                }
            },
            is_strict=False,
        )
    else:
        raise ValueError(f"unknown kind {kind!r}; use retinanet or maskrcnn")
    params.validate()
    return params


def build(kind: str, out_base: Path, steps: int | None = None, seed: int = 7) -> Path:
    """Train and export one tiny model into ``out_base/1``; returns that folder.

    The training is seeded but not bit-for-bit repeatable (op determinism is off),
    and a few steps now and then leave a model that detects nothing (one Mask R-CNN
    build of 120 steps in a clean run wrote no box on any frame, and three tests
    failed on it): a build that does not detect on its own training frames is
    trained again from the next seed, up to ``ATTEMPTS`` times.
    """
    for attempt in range(ATTEMPTS):
        version_dir = _build(kind, out_base, steps, seed + attempt)
        weakest = _weakest_frame(version_dir)
        if weakest >= MIN_SCORE:
            return version_dir
        print(f"{kind} seed {seed + attempt}: best score {weakest:.3f} on a frame; again")
        shutil.rmtree(version_dir)
    raise RuntimeError(
        f"{ATTEMPTS} {kind} builds each left a training frame without a detection "
        f"at score >= {MIN_SCORE}: the fixture's recipe no longer learns"
    )


def _weakest_frame(version_dir: Path) -> float:
    """The lowest, over the first training frames, of each frame's best score."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    best = []
    for data, _w, _h, _objects in training_set(CHECK_FRAMES):
        scores = serve(inputs=tf.constant([data]))["detection_scores"].numpy()
        best.append(float(scores.max()) if scores.size else 0.0)
    return min(best)


def _build(kind: str, out_base: Path, steps: int | None, seed: int) -> Path:
    import tensorflow as tf
    from official.core import task_factory
    from official.modeling import optimization

    # Seeded (data order, augmentation, initial weights), so that rebuilds agree closely;
    # op determinism is left off: it breaks Model Garden's tf.data pipeline.
    tf.keras.utils.set_random_seed(seed)
    steps = steps or STEPS[kind]
    work = Path(tempfile.mkdtemp(prefix=f"fixture-{kind}-"))
    try:
        train_path = work / "train.tfrecord"
        _write_tfrecord(train_path, 96, masks=(kind == "maskrcnn"))
        params = _params(
            kind, train_path, batch_size=4 if kind == "retinanet" else 2, steps=steps, seed=seed
        )
        task = task_factory.get_task(params.task, logging_dir=str(work))
        model = task.build_model()
        dataset = task.build_inputs(params.task.train_data).repeat()
        factory = optimization.OptimizerFactory(params.trainer.optimizer_config)
        optimizer = factory.build_optimizer(factory.build_learning_rate())

        @tf.function
        def step(inputs):
            return task.train_step(inputs, model, optimizer)

        for i, inputs in enumerate(dataset.take(steps)):
            logs = step(inputs)
            if i % 50 == 0 or i == steps - 1:
                loss = float(next(iter(logs.values())))
                print(f"{kind} step {i} loss {loss:.4f}", flush=True)
        ckpt_path = tf.train.Checkpoint(model=model).save(str(work / "ckpt" / "ckpt"))

        version_dir = Path(out_base) / "1"
        _export(params, ckpt_path, version_dir)
        assets = version_dir / "assets"
        assets.mkdir(exist_ok=True)
        (assets / "classes.csv").write_text("".join(f"{c}\n" for c in CLASSES))
        return version_dir
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export(params, checkpoint: str, version_dir: Path) -> None:
    """Model Garden's stock ``DetectionModule`` with both signatures, saved the way the
    converter saves (``services.converter.module.saved_root``: the variables and the
    signatures, not the Keras layers' functions, which made each load four times slower)."""
    import tensorflow as tf
    from official.vision.serving import detection

    from services.converter.module import saved_root

    module = detection.DetectionModule(
        params=params,
        batch_size=None,
        input_image_size=[INPUT_SIZE, INPUT_SIZE],
        input_type="image_bytes",
    )
    signatures = module.get_inference_signatures(
        {"image_bytes": "serving_default", "image_tensor": TENSOR_SIGNATURE}
    )
    status = tf.train.Checkpoint(model=module.model).read(checkpoint)
    status.assert_existing_objects_matched().expect_partial()
    tf.saved_model.save(saved_root(module), str(version_dir), signatures=signatures)


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "preannotate-inference-fixtures"


def cached_base(kind: str) -> Path:
    """Where ``cached(kind)`` keeps the model: keyed by this file's content and the
    stand-in's drawing code (a change to either makes a new model)."""
    standin = Path(__file__).resolve().parents[1] / "standins" / "cvat"
    sources = [Path(__file__), standin / "data.py", standin / "rle.py"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + kind.encode())
    return cache_root() / f"{kind}-{digest.hexdigest()[:16]}"


def is_cached(kind: str) -> bool:
    return (cached_base(kind) / prebuild.DONE).exists()


def cached(kind: str) -> Path:
    """The model base folder (holding ``1/``) for ``kind``, built once per content hash."""
    return prebuild.build_once("tests.inference.modelfactory", kind, cached_base(kind))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(STEPS))
    parser.add_argument("out_base", type=Path)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    print(build(args.kind, args.out_base, args.steps))


if __name__ == "__main__":
    main()
