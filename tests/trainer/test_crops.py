"""Training crops centred on objects (``preannotate.vision.crops``, ``crop_objects``).

Where the window falls, and the trainer's training view reading real TFRecords
through the task Model Garden is given: with ``crop_objects=1`` every crop of a
large frame holds its one small object; with ``crop_objects=0`` (Model Garden's
uniform window) most do not.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from preannotate import catalog
from preannotate.arguments import parse, resolve
from services.exporter import tfrecord
from services.exporter.examples import ObjectRecord, build_example
from services.trainer.configs import ExperimentInputs, build_experiment, common

#: Builds input pipelines with TensorFlow: left out of `make test-fast`.
pytestmark = pytest.mark.tf

FRAME, SIDE = 512, 32  # one SIDE-px square per FRAME-px frame


def _contains(offset, window, point) -> bool:
    return bool(np.all(offset <= point) and np.all(point < offset + window))


def test_the_window_holds_the_chosen_object_and_stays_in_the_frame():
    import tensorflow as tf

    from preannotate.vision.crops import JITTER, window_offset

    scaled, window = tf.constant([600.0, 800.0]), tf.constant([256.0, 256.0])
    box = tf.constant([[500.0, 700.0, 520.0, 720.0]])  # near the bottom-right corner
    centre = np.array([510.0, 710.0])
    room = np.array([344.0, 544.0])
    near = [window_offset(box, scaled, window, 1.0).numpy() for _ in range(200)]
    anywhere = [window_offset(box, scaled, window, 0.0).numpy() for _ in range(200)]
    for offsets in (near, anywhere):
        assert all(np.all(o >= 0) and np.all(o <= room) for o in offsets)
    assert all(_contains(o, 256, centre) for o in near)
    # Unclipped, the object's centre lies within JITTER of the window's centre.
    inner = [o for o in near if np.all(o < room)]
    assert inner and all(np.all(np.abs(o + 128 - centre) <= JITTER * 256 + 1) for o in inner)
    # A uniform window holds that corner about 4 % of the time (90/344 x 90/544).
    assert sum(_contains(o, 256, centre) for o in anywhere) < 40
    # No object: uniform, whatever the share.
    empty = window_offset(tf.zeros([0, 4]), scaled, window, 1.0).numpy()
    assert np.all(empty >= 0) and np.all(empty <= room)


def _frames(path, count: int) -> None:
    rng = np.random.default_rng(3)
    records = []
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 80, (FRAME, FRAME, 3), dtype=np.uint8))
        x, y = (int(v) for v in rng.integers(0, FRAME - SIDE, 2))
        ImageDraw.Draw(image).rectangle([x, y, x + SIDE - 1, y + SIDE - 1], fill=(230, 40, 40))
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=90)
        box = ObjectRecord(
            xmin=x / FRAME,
            ymin=y / FRAME,
            xmax=(x + SIDE) / FRAME,
            ymax=(y + SIDE) / FRAME,
            label=1,
            text="square",
            area=float(SIDE * SIDE),
            is_crowd=False,
            mask_png=None,
        )
        example = build_example(
            encoded=encoded.getvalue(),
            image_format="jpeg",
            height=FRAME,
            width=FRAME,
            source_id=index + 1,
            file_name=f"f{index}.jpg",
            objects=[box],
            with_masks=False,
        )
        records.append(tfrecord.frame(example.SerializeToString()))
    path.write_bytes(b"".join(records))


def _crops_with_an_object(tmp_path, share: str) -> list[bool]:
    from official.core import task_factory

    from preannotate.vision import crops, registry

    records = tmp_path / "train-00000-of-00001.tfrecord"
    if not records.exists():
        _frames(records, 8)
    entry = catalog.get("ssd-mobilenet-v2-coco")
    text = f"input_size={FRAME};crop_size=128;crop_objects={share};batch_size=8"
    plan = resolve(parse(text, entry, machine_gpus=0), entry, 8)
    params = build_experiment(
        entry,
        plan,
        ExperimentInputs(
            num_classes=2,
            train_pattern=str(records),
            val_pattern=str(records),
            annotation_file=None,
            regenerate_source_id=False,
            eval_batch_size=1,
            val_images=1,
            checkpoint_every=10,
        ),
    )
    view = common.training_view(params, plan)
    registry.register()
    task = task_factory.get_task(view.task)
    assert isinstance(task, crops.RetinaNetTask)
    held = []
    for _, labels in task.build_inputs(view.task.train_data).take(4):
        positives = sum(
            np.reshape(level.numpy() > 0, (8, -1)).sum(axis=1)
            for level in labels["cls_targets"].values()
        )
        held.extend(bool(p) for p in positives)
    return held


def test_object_crops_hold_an_object_where_uniform_ones_mostly_do_not(tmp_path):
    # Crops of 128 from frames scaled up to 1.25 x 512 / 128 = 5 times: a uniform
    # window holds the frame's one object about a fifth of the time.
    assert all(_crops_with_an_object(tmp_path, "1"))
    uniform = _crops_with_an_object(tmp_path, "0")
    assert sum(uniform) < 0.6 * len(uniform)
