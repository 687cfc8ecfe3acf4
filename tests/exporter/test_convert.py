"""COCO 1.0 export -> TFRecords, read back with official.vision's TfExampleDecoder.

The export mixes rectangles, polygons, uncompressed and compressed RLE masks,
crowd flags, negatives, a PNG among JPEGs and a broken shape; every decoded
record is compared with the annotations it came from.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from preannotate.classes import classes_csv
from preannotate.errors import InvalidArgument
from services.exporter.coco import read_export
from services.exporter.convert import ConvertOptions, SplitStats, convert_export
from services.exporter.masks import polygons_to_mask
from services.exporter.tfrecord import read_records
from services.exporter.unpack import UnpackLimits, safe_unpack
from tests.exporter.cocozip import Builder
from tests.exporter.test_masks import _uncompressed

W, H = 64, 48
LIMITS = UnpackLimits(max_bytes=50 << 20, max_files=1000)
CAT, DOG = 1, 3  # COCO ids; classes become cat=1, dog=2


def _blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), dtype=np.uint8)
    y, x = int(rng.integers(2, 20)), int(rng.integers(2, 30))
    mask[y : y + 12, x : x + 15] = 1
    mask[y + 3 : y + 6, x + 4 : x + 9] = 0  # a hole
    return mask


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() + 1 - xs.min()),
        float(ys.max() + 1 - ys.min()),
    ]


def build_mixed(path: Path, n: int = 12) -> tuple[Path, dict[str, list[dict]]]:
    """The export, and what each image should decode to: [{box, label, crowd, mask}]."""
    b = Builder([(DOG, "dog"), (CAT, "cat")])
    expected: dict[str, list[dict]] = {}
    for i in range(n):
        name = f"frame_{i:06d}.png" if i == 5 else f"frame_{i:06d}.jpg"
        image_id = b.image(name, W, H, fmt="PNG" if i == 5 else "JPEG")
        objects = expected.setdefault(name, [])
        kind = i % 4
        if kind == 0:
            box = [4.0 + i, 6.0, 20.0, 10.0]
            b.annotate(image_id, CAT, box)
            mask = np.zeros((H, W), np.uint8)
            mask[6:16, 4 + i : 24 + i] = 1
            objects.append({"box": box, "label": 1, "crowd": False, "mask": mask, "area": 200.0})
        elif kind == 1:
            poly = [10.0, 5.0, 40.0, 9.0, 33.0, 30.0, 12.0, 26.0]
            b.annotate(image_id, DOG, [10.0, 5.0, 30.0, 25.0], [poly], area=600.0)
            objects.append(
                {
                    "box": [10.0, 5.0, 30.0, 25.0],
                    "label": 2,
                    "crowd": False,
                    "poly": poly,
                    "area": 600.0,
                }
            )
        elif kind == 2:
            # CVAT writes masks as RLE with iscrowd 1: not a crowd unless the label's
            # is_crowd attribute says so; a plain COCO file keeps its iscrowd.
            mask = _blob(i)
            attributes = [None, {"occluded": False, "is_crowd": True}, {}][(i // 4) % 3]
            b.annotate(
                image_id,
                CAT,
                _bbox(mask),
                _uncompressed(mask),
                area=float(mask.sum()),
                iscrowd=1,
                attributes=attributes,
            )
            objects.append(
                {
                    "box": _bbox(mask),
                    "label": 1,
                    "crowd": attributes is not None,
                    "mask": mask,
                    "area": float(mask.sum()),
                }
            )
        else:
            mask = _blob(100 + i)
            rle = coco_mask.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            b.annotate(image_id, DOG, _bbox(mask), rle, area=float(mask.sum()))
            objects.append(
                {
                    "box": _bbox(mask),
                    "label": 2,
                    "crowd": False,
                    "mask": mask,
                    "area": float(mask.sum()),
                }
            )
            # A second instance on the same image, partly outside it (clipped).
            b.annotate(image_id, CAT, [50.0, 40.0, 30.0, 30.0])
            clip = np.zeros((H, W), np.uint8)
            clip[40:48, 50:64] = 1
            objects.append(
                {
                    "box": [50.0, 40.0, 14.0, 8.0],
                    "label": 1,
                    "crowd": False,
                    "mask": clip,
                    "area": 900.0,
                }
            )
    # A shape with an empty box is dropped (and counted).
    b.annotate(1, DOG, [3.0, 3.0, 0.0, 5.0])
    for neg in ("neg_a.jpg", "neg_b.jpg"):
        b.image(neg, W, H)
        expected[neg] = []
    return b.write(path), expected


def convert_zip(tmp: Path, archive: Path, options: ConvertOptions | None = None):
    safe_unpack(archive, tmp / "unpacked", LIMITS)
    export = read_export(tmp / "unpacked")
    return convert_export(export, tmp / "out", options or ConvertOptions(), source="test export")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from tests.exporter.tfdecode import decode_records

    tmp = tmp_path_factory.mktemp("mixed")
    archive, expected = build_mixed(tmp / "export.zip")
    result = convert_zip(tmp, archive)
    decoded = {}
    for split in ("train", "val"):
        paths = sorted((tmp / "out").glob(f"{split}-*.tfrecord"))
        for item in decode_records(paths):
            item["split"] = split
            decoded[item["filename"]] = item
    return tmp, archive, expected, result, decoded


@pytest.mark.tf
def test_every_image_decodes_to_its_annotations(mixed):
    _, _, expected, result, decoded = mixed
    assert sorted(decoded) == sorted(expected)
    assert result.classes == ["cat", "dog"]
    assert result.has_masks
    source_ids = set()
    for name, objects in expected.items():
        item = decoded[name]
        assert (item["height"], item["width"]) == (H, W)
        assert item["image"].shape == (H, W, 3)
        source_ids.add(int(item["source_id"]))
        boxes = item["groundtruth_boxes"]
        assert boxes.shape == (len(objects), 4), name
        for k, obj in enumerate(objects):
            x, y, w, h = obj["box"]
            np.testing.assert_allclose(
                boxes[k], [y / H, x / W, (y + h) / H, (x + w) / W], atol=1e-6
            )
            assert item["groundtruth_classes"][k] == obj["label"]
            assert item["class_text"][k] == ["cat", "dog"][obj["label"] - 1]
            assert bool(item["groundtruth_is_crowd"][k]) == obj["crowd"]
            assert item["groundtruth_area"][k] == pytest.approx(obj["area"])
            mask = item["groundtruth_instance_masks"][k]
            assert mask.shape == (H, W)
            if "poly" in obj:
                assert np.array_equal(mask, polygons_to_mask([obj["poly"]], H, W))
                theirs = coco_mask.decode(
                    coco_mask.merge(coco_mask.frPyObjects([obj["poly"]], H, W))
                )
                assert ((mask > 0) & (theirs > 0)).sum() / ((mask > 0) | (theirs > 0)).sum() > 0.9
            else:
                assert np.array_equal(mask, obj["mask"]), f"{name} instance {k}"
    assert len(source_ids) == len(expected)


@pytest.mark.tf
def test_images_are_stored_as_they_came(mixed):
    tmp, _, _, _, decoded = mixed
    png = decoded["frame_000005.png"]
    assert png["format"] == "png"
    original = np.asarray(Image.open(tmp / "unpacked/images/default/frame_000005.png"))
    assert np.array_equal(png["image"], original)
    assert decoded["frame_000000.jpg"]["format"] == "jpeg"


@pytest.mark.tf
def test_counts_splits_and_files(mixed):
    tmp, _, expected, result, decoded = mixed
    out = tmp / "out"
    for split in ("train", "val"):
        stats = result.splits[split]
        items = [d for d in decoded.values() if d["split"] == split]
        assert stats.images == len(items)
        assert stats.boxes == sum(len(d["groundtruth_classes"]) for d in items)
        assert stats.negatives == sum(1 for d in items if not len(d["groundtruth_classes"]))
        for label, name in ((1, "cat"), (2, "dog")):
            assert stats.boxes_per_class[name] == sum(
                int((d["groundtruth_classes"] == label).sum()) for d in items
            )
        assert sum(s["records"] for s in stats.shards) == stats.images
        side = max(H, W)
        assert stats.as_dict()["long_side"] == {"min": side, "median": side, "max": side}
    assert result.splits["val"].images >= 1
    assert any(len(d["groundtruth_classes"]) for d in decoded.values() if d["split"] == "val")
    assert result.splits["train"].negatives + result.splits["val"].negatives == 2
    assert result.notes == {"shape dropped: empty box or box outside the image": 1}
    assert (out / "classes.csv").read_text() == classes_csv(["cat", "dog"])
    assert (out / "label_map.pbtxt").read_text() == (
        'item {\n  id: 1\n  name: "cat"\n}\n\nitem {\n  id: 2\n  name: "dog"\n}\n'
    )
    rows = (out / "images.csv").read_text().splitlines()
    assert rows[0] == "source_id,file_name,split" and len(rows) == len(expected) + 1


def test_conversion_is_deterministic(mixed, tmp_path):
    tmp, archive, _, _, _ = mixed
    again = convert_zip(tmp_path, archive)
    first = sorted((tmp / "out").glob("*.tfrecord"))
    second = sorted((tmp_path / "out").glob("*.tfrecord"))
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert again.splits["val"].as_dict() == mixed[3].splits["val"].as_dict()


def test_negatives_can_be_left_out(mixed, tmp_path):
    _, archive, _, _, _ = mixed
    result = convert_zip(tmp_path, archive, ConvertOptions(keep_negatives=False))
    assert result.splits["train"].negatives + result.splits["val"].negatives == 0
    assert result.notes["negatives left out (keep_negatives is off)"] == 2
    names = [r.split(",")[1] for r in (tmp_path / "out/images.csv").read_text().splitlines()[1:]]
    assert "neg_a.jpg" not in names and "frame_000000.jpg" in names


def test_shards_by_image_count(mixed, tmp_path):
    _, archive, _, _, _ = mixed
    result = convert_zip(tmp_path, archive, ConvertOptions(shard_max_images=3))
    train = result.splits["train"]
    assert len(train.shards) == -(-train.images // 3)
    total = sum(len(read_records(tmp_path / "out" / s["name"])) for s in train.shards)
    assert total == train.images


@pytest.mark.tf
def test_boxes_only_export_has_no_masks(tmp_path):
    from tests.exporter.tfdecode import decode_records

    b = Builder([(1, "car")])
    for i in range(4):
        b.annotate(b.image(f"{i}.jpg", W, H), 1, [1.0, 2.0, 10.0, 20.0])
    result = convert_zip(tmp_path, b.write(tmp_path / "e.zip"))
    assert not result.has_masks
    items = decode_records(sorted((tmp_path / "out").glob("*.tfrecord")))
    assert len(items) == 4
    assert all(i["groundtruth_instance_masks"].shape == (0, H, W) for i in items)
    assert all(i["groundtruth_boxes"].shape == (1, 4) for i in items)


def test_no_labelled_shapes_is_refused(tmp_path):
    b = Builder([(1, "cat")])
    for i in range(5):
        b.image(f"{i}.jpg", W, H)
    with pytest.raises(InvalidArgument, match="test export has no labelled shapes"):
        convert_zip(tmp_path, b.write(tmp_path / "e.zip"))
    assert not (tmp_path / "out").exists()


def test_only_broken_shapes_is_refused_with_the_reason(tmp_path):
    b = Builder([(1, "cat")])
    for i in range(3):
        b.annotate(b.image(f"{i}.jpg", W, H), 1, [500.0, 500.0, 10.0, 10.0])
    with pytest.raises(InvalidArgument, match=r"no labelled shapes \(3 shapes.*outside the image"):
        convert_zip(tmp_path, b.write(tmp_path / "e.zip"))


def test_missing_and_mis_sized_images_are_skipped_and_counted(tmp_path):
    b = Builder([(1, "cat")])
    for i in range(4):
        b.annotate(b.image(f"{i}.jpg", W, H), 1, [1.0, 1.0, 5.0, 5.0])
    b.annotate(b.image("small.jpg", W, H, data=_jpeg(10, 10)), 1, [1.0, 1.0, 5.0, 5.0])
    b.annotate(b.image("gone.jpg", W, H), 1, [1.0, 1.0, 5.0, 5.0])
    del b.files["gone.jpg"]
    result = convert_zip(tmp_path, b.write(tmp_path / "e.zip"))
    assert result.splits["train"].images + result.splits["val"].images == 4
    assert result.notes == {
        "image skipped: the file is missing from the export": 1,
        "image skipped: the file is 10x10, the export says 64x48": 1,
    }


def test_exif_turned_images_are_turned(tmp_path):
    from tests.exporter.tfdecode import decode_records

    # Stored 48x64 with "rotate 90" in EXIF; CVAT shows (and annotates) it 64x48.
    stored = Image.new("RGB", (H, W), (10, 20, 30))
    stored.putpixel((0, 0), (250, 250, 250))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    stored.save(out, format="JPEG", exif=exif, quality=100)
    b = Builder([(1, "cat")])
    b.annotate(b.image("turned.jpg", W, H, data=out.getvalue()), 1, [1.0, 1.0, 5.0, 5.0])
    b.annotate(b.image("plain.jpg", W, H), 1, [1.0, 1.0, 5.0, 5.0])
    convert_zip(tmp_path, b.write(tmp_path / "e.zip"))
    items = {
        i["filename"]: i for i in decode_records(sorted((tmp_path / "out").glob("*.tfrecord")))
    }
    turned = items["turned.jpg"]["image"]
    assert turned.shape == (H, W, 3)
    # Orientation 6 shows the stored top-left corner at the top right.
    assert turned[0, W - 1].min() > 150 and turned[0, 0].max() < 100


def test_flat_image_folder_of_older_servers(tmp_path):
    b = Builder([(1, "cat")])
    for i in range(3):
        b.annotate(b.image(f"{i}.jpg", W, H), 1, [1.0, 1.0, 5.0, 5.0])
    result = convert_zip(tmp_path, b.write(tmp_path / "e.zip", flat_images=True))
    assert result.splits["train"].images + result.splits["val"].images == 3


def test_unknown_category_is_refused(tmp_path):
    b = Builder([(1, "cat")])
    b.annotate(b.image("0.jpg", W, H), 7, [1.0, 1.0, 5.0, 5.0])
    with pytest.raises(InvalidArgument, match="category_id 7, which 'categories' lacks"):
        convert_zip(tmp_path, b.write(tmp_path / "e.zip"))


def _jpeg(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h)).save(out, format="JPEG")
    return out.getvalue()


def test_the_manifest_keeps_the_frames_longer_sides():
    """input_size=auto reads the median; min and max tell people the spread."""
    stats = SplitStats(long_sides=[640, 320, 1024, 480, 576])
    assert stats.as_dict()["long_side"] == {"min": 320, "median": 576, "max": 1024}
    assert SplitStats().as_dict()["long_side"] == {}
