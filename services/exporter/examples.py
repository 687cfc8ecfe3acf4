"""tf.train.Example records in the layout official.vision's TfExampleDecoder reads.

Built with ``preannotate.tfexample.example_pb2``, a wire-compatible twin of
``tensorflow.Example``, so no TensorFlow is imported. Keys written:

    image/encoded, image/format, image/filename, image/source_id,
    image/height, image/width,
    image/object/bbox/xmin|xmax|ymin|ymax   (normalised to 0..1)
    image/object/class/label                (1..K; 0 is the background)
    image/object/class/text
    image/object/area                       (pixels)
    image/object/is_crowd
    image/object/mask                       (one PNG per instance; only when masks are on)

``image/source_id`` is a decimal number: Model Garden's parsers turn it into
an int64 (``process_source_id``) for COCO evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from preannotate.tfexample import example_pb2


@dataclass(frozen=True)
class ObjectRecord:
    """One instance, ready to write: a normalised box, its class, its mask."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: int
    text: str
    area: float
    is_crowd: bool
    mask_png: bytes | None = None


def _bytes(values: Iterable[bytes]) -> example_pb2.Feature:
    return example_pb2.Feature(bytes_list=example_pb2.BytesList(value=list(values)))


def _floats(values: Iterable[float]) -> example_pb2.Feature:
    return example_pb2.Feature(float_list=example_pb2.FloatList(value=list(values)))


def _ints(values: Iterable[int]) -> example_pb2.Feature:
    return example_pb2.Feature(int64_list=example_pb2.Int64List(value=list(values)))


def build_example(
    *,
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    source_id: int,
    file_name: str,
    objects: Sequence[ObjectRecord],
    with_masks: bool,
) -> example_pb2.Example:
    """One image and its instances as an Example."""
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format.encode()]),
        "image/filename": _bytes([file_name.encode("utf-8")]),
        "image/source_id": _bytes([str(source_id).encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/object/bbox/xmin": _floats(o.xmin for o in objects),
        "image/object/bbox/xmax": _floats(o.xmax for o in objects),
        "image/object/bbox/ymin": _floats(o.ymin for o in objects),
        "image/object/bbox/ymax": _floats(o.ymax for o in objects),
        "image/object/class/label": _ints(o.label for o in objects),
        "image/object/class/text": _bytes(o.text.encode("utf-8") for o in objects),
        "image/object/area": _floats(o.area for o in objects),
        "image/object/is_crowd": _ints(int(o.is_crowd) for o in objects),
    }
    if with_masks:
        missing = [i for i, o in enumerate(objects) if o.mask_png is None]
        if missing:
            raise ValueError(f"instances {missing} of {file_name!r} have no mask")
        feature["image/object/mask"] = _bytes(o.mask_png or b"" for o in objects)
    return example_pb2.Example(features=example_pb2.Features(feature=feature))
