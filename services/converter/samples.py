"""The images the parity check runs: from the job's validation split, else synthetic.

No TensorFlow here: TFRecord files are read by their framing with
``preannotate.tfrecord`` and each record is parsed with the
``tf.train.Example`` message of ``preannotate.tfexample``. The encoded bytes
are kept as they are (the JPEG or PNG that CVAT gave), so the exported model's
``serving_default`` decodes exactly what a client would send it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image, ImageDraw

from preannotate.errors import NotFound
from preannotate.keys import check_name
from preannotate.storage.base import Storage, check_prefix
from preannotate.tfexample import example_pb2
from preannotate.tfrecord import CorruptRecord, iter_records

#: Encodings the exported models decode (tf.io.decode_image): what a sample must be.
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}


@dataclass(frozen=True)
class Samples:
    """Image files for the parity check and where they came from."""

    paths: list[Path]
    #: "validation" (the job's val split) or "synthetic".
    source: str
    #: Why the validation split was not used; empty when it was.
    note: str = ""


def image_kind(data: bytes) -> str | None:
    """ "jpeg" or "png" by the file's magic bytes; None for anything else."""
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            return kind
    return None


def encoded_image(record: bytes) -> bytes | None:
    """``image/encoded`` of one serialised tf.train.Example, or None."""
    example = example_pb2.Example.FromString(record)
    feature = example.features.feature.get("image/encoded")
    if feature is None or not feature.bytes_list.value:
        return None
    return feature.bytes_list.value[0]


def validation_shards(storage: Storage, dataset_prefix: str) -> list[str]:
    """The keys of ``val-*.tfrecord`` under a dataset prefix, sorted."""
    prefix = check_prefix(dataset_prefix)
    return [
        key
        for key in storage.list(prefix)
        if key.rsplit("/", 1)[-1].startswith("val-") and key.endswith(".tfrecord")
    ]


def check_dataset_prefix(namespace: str, dataset_prefix: str) -> str:
    """A dataset prefix of the event, only if it is ``<namespace>/datasets/<job>/``."""
    parts = dataset_prefix.rstrip("/").split("/")
    if len(parts) != 3 or parts[0] != namespace or parts[1] != "datasets":
        raise ValueError(
            f"dataset prefix {dataset_prefix!r} is not <namespace>/datasets/<job_id>/ "
            f"of namespace {namespace!r}"
        )
    check_name(parts[2], "dataset job id")
    return check_prefix("/".join(parts) + "/")


def from_validation(
    storage: Storage, namespace: str, dataset_prefix: str, count: int, out: Path, max_bytes: int
) -> tuple[list[Path], str]:
    """Up to ``count`` images of the validation split written under ``out``.

    Returns the files and, when fewer than asked were found, why.
    """
    if not dataset_prefix:
        return [], "the event names no dataset"
    try:
        prefix = check_dataset_prefix(namespace, dataset_prefix)
    except ValueError as exc:
        return [], str(exc)
    shards = validation_shards(storage, prefix)
    if not shards:
        return [], f"no val-*.tfrecord under {prefix}"
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    problems: list[str] = []
    for key in shards:
        if len(paths) >= count:
            break
        try:
            blob = storage.get(key)
        except NotFound:
            problems.append(f"{key}: gone")
            continue
        if len(blob) > max_bytes:
            problems.append(f"{key}: {len(blob)} bytes, above {max_bytes}")
            continue
        try:
            for record in iter_records(blob):
                data = encoded_image(record)
                kind = image_kind(data) if data else None
                if kind is None:
                    continue
                path = out / f"val-{len(paths):03d}.{'jpg' if kind == 'jpeg' else 'png'}"
                path.write_bytes(data)
                paths.append(path)
                if len(paths) >= count:
                    break
        except (CorruptRecord, DecodeError) as exc:
            problems.append(f"{key}: {exc}")
    note = "" if paths else ("; ".join(problems) or f"no JPEG or PNG images in {prefix}")
    return paths, note


def synthetic(count: int, input_size: int, out: Path, seed: int = 0) -> list[Path]:
    """``count`` images of shapes on a noisy background, sizes around ``input_size``.

    Half PNG, half JPEG, in landscape, portrait and square shapes, so both
    decoders and the resize-and-pad path of the exported model are exercised.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    side = max(32, input_size)
    shapes = ((side, side), (side * 5 // 4, side * 3 // 4), (side * 3 // 4, side * 5 // 4))
    paths = []
    for i in range(count):
        width, height = shapes[i % len(shapes)]
        base = rng.integers(60, 190, size=(height, width, 3))
        pixels = np.clip(base + rng.integers(-20, 20, size=(height, width, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x1, y1 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            x2 = x1 + int(rng.integers(width // 8, width // 2))
            y2 = y1 + int(rng.integers(height // 8, height // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            if rng.random() < 0.5:
                draw.rectangle([x1, y1, x2, y2], fill=colour)
            else:
                draw.ellipse([x1, y1, x2, y2], fill=colour)
        fmt = "PNG" if i % 2 == 0 else "JPEG"
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        path = out / f"synthetic-{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def parity_samples(
    storage: Storage,
    namespace: str,
    dataset_prefix: str,
    count: int,
    input_size: int,
    out: Path,
    max_shard_bytes: int,
) -> Samples:
    """The parity images: the validation split's first ``count``, else synthetic ones."""
    paths, note = from_validation(
        storage, namespace, dataset_prefix, count, out / "validation", max_shard_bytes
    )
    if paths:
        return Samples(paths, "validation")
    return Samples(synthetic(count, input_size, out / "synthetic"), "synthetic", note)
