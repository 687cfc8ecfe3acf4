"""A tiny dataset in the exporter's layout, written into a storage for the trainer tests.

``<ns>/datasets/<job_id>/``: ``train-00000-of-00001.tfrecord``,
``val-00000-of-00001.tfrecord``, ``label_map.pbtxt``, ``classes.csv`` and
``manifest.json`` last, with records built by the exporter's own Example
builder and TFRecord framing (so a change there shows up here). Images are
noise with red rectangles (class 1) and blue ellipses (class 2), and, for a
third class, green triangles; each instance has its PNG mask.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from preannotate.classes import classes_csv
from preannotate.keys import dataset_prefix
from preannotate.storage import PrefixWriter, Storage
from preannotate.v1 import common_pb2, events_pb2
from services.exporter import labelmap, tfrecord
from services.exporter.examples import ObjectRecord, build_example

COLOURS = [(230, 40, 40), (40, 60, 230), (40, 200, 60)]


@dataclass(frozen=True)
class TinyDataset:
    namespace: str
    job_id: str
    prefix: str
    classes: tuple[str, ...]
    train_images: int
    val_images: int
    has_masks: bool

    def event(
        self,
        model_type: str,
        arguments: str = "",
        *,
        model_name: str = "",
        base_model: common_pb2.ModelRef | None = None,
        gpus: int = 0,
        job_id: str | None = None,
    ) -> events_pb2.DatasetExported:
        training = common_pb2.TrainingSpec(
            model_type=model_type,
            arguments=arguments,
            model_name=model_name,
            gpus=gpus,
            machine_type="cpu",
        )
        if base_model is not None:
            training.base_model.CopyFrom(base_model)
        return events_pb2.DatasetExported(
            job_id=job_id or self.job_id,
            namespace=self.namespace,
            cvat=common_pb2.CvatRef(task_id=7),
            training=training,
            dataset_prefix=self.prefix,
            classes=list(self.classes),
            train=common_pb2.SplitCounts(images=self.train_images),
            val=common_pb2.SplitCounts(images=self.val_images),
            has_masks=self.has_masks,
        )


def _image(rng: random.Random, size: int, classes: int, masks: bool, source_id: int):
    pixels = bytes(rng.randrange(0, 90) for _ in range(size * size * 3))
    image = Image.frombytes("RGB", (size, size), pixels)
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(rng.randint(1, 2)):
        label = rng.randint(1, classes)
        w, h = rng.randint(size // 4, size // 2), rng.randint(size // 4, size // 2)
        x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
        box = [x0, y0, x0 + w - 1, y0 + h - 1]
        mask = Image.new("L", (size, size), 0)
        shape = {1: "rectangle", 2: "ellipse"}.get(label, "polygon")
        if shape == "polygon":
            points = [(x0, y0 + h - 1), (x0 + w // 2, y0), (x0 + w - 1, y0 + h - 1)]
            draw.polygon(points, fill=COLOURS[label - 1])
            ImageDraw.Draw(mask).polygon(points, fill=1)
        else:
            getattr(draw, shape)(box, fill=COLOURS[label - 1])
            getattr(ImageDraw.Draw(mask), shape)(box, fill=1)
        png = io.BytesIO()
        mask.save(png, "PNG")
        objects.append(
            ObjectRecord(
                xmin=x0 / size,
                ymin=y0 / size,
                xmax=(x0 + w) / size,
                ymax=(y0 + h) / size,
                label=label,
                text=str(label),
                area=float(mask.histogram()[1]),
                is_crowd=False,
                mask_png=png.getvalue() if masks else None,
            )
        )
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=90)
    return build_example(
        encoded=encoded.getvalue(),
        image_format="jpeg",
        height=size,
        width=size,
        source_id=source_id,
        file_name=f"img{source_id}.jpg",
        objects=objects,
        with_masks=masks,
    )


def write_dataset(
    storage: Storage,
    *,
    namespace: str = "default",
    job_id: str = "job-1",
    classes: tuple[str, ...] = ("rect", "ellipse"),
    train_images: int = 6,
    val_images: int = 2,
    size: int = 96,
    masks: bool = False,
    seed: int = 0,
) -> TinyDataset:
    rng = random.Random(seed)
    prefix = dataset_prefix(namespace, job_id)
    source = iter(range(1, 10_000))
    splits = {"train": train_images, "val": val_images}
    with PrefixWriter(storage, prefix) as out:
        for split, count in splits.items():
            records = b"".join(
                tfrecord.frame(
                    _image(rng, size, len(classes), masks, next(source)).SerializeToString()
                )
                for _ in range(count)
            )
            out.put(f"{split}-00000-of-00001.tfrecord", records)
        out.put("label_map.pbtxt", labelmap.label_map_pbtxt(classes).encode())
        out.put("classes.csv", classes_csv(classes).encode())
        out.commit(
            {
                "kind": "dataset",
                "job_id": job_id,
                "namespace": namespace,
                "classes": list(classes),
                "num_classes": len(classes) + 1,
                "has_masks": masks,
                "splits": {
                    name: {"images": n, "long_side": {"min": size, "median": size, "max": size}}
                    for name, n in splits.items()
                },
                "input_patterns": {name: f"{name}-*.tfrecord" for name in splits},
            }
        )
    return TinyDataset(namespace, job_id, prefix, classes, train_images, val_images, masks)
