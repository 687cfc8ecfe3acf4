"""Parity images: the job's validation split (read without TensorFlow), else synthetic ones."""

from __future__ import annotations

import io

from PIL import Image

from services.converter.samples import iter_records, parity_samples
from tests.trainer.datasets import write_dataset


def _samples(storage, prefix, tmp_path, namespace="default", count=4, max_bytes=1 << 30):
    return parity_samples(storage, namespace, prefix, count, 96, tmp_path / "images", max_bytes)


def test_images_come_from_the_validation_split(local_storage, tmp_path):
    data = write_dataset(local_storage, train_images=2, val_images=3, size=96)
    found = _samples(local_storage, data.prefix, tmp_path)
    assert found.source == "validation" and found.note == ""
    assert len(found.paths) == 3
    for path in found.paths:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (96, 96)


def test_at_most_the_asked_count(local_storage, tmp_path):
    data = write_dataset(local_storage, train_images=1, val_images=5, size=64)
    assert len(_samples(local_storage, data.prefix, tmp_path, count=2).paths) == 2


def test_records_are_read_with_their_checksums(local_storage):
    data = write_dataset(local_storage, train_images=1, val_images=2, size=64)
    blob = local_storage.get(data.prefix + "val-00000-of-00001.tfrecord")
    assert len(list(iter_records(blob))) == 2


def test_a_corrupt_shard_falls_back_to_synthetic_images_and_says_why(local_storage, tmp_path):
    data = write_dataset(local_storage, train_images=1, val_images=2, size=64)
    key = data.prefix + "val-00000-of-00001.tfrecord"
    blob = bytearray(local_storage.get(key))
    blob[40] ^= 0xFF
    local_storage.put(key, bytes(blob))
    found = _samples(local_storage, data.prefix, tmp_path)
    assert found.source == "synthetic" and "checksum" in found.note
    assert len(found.paths) == 4


def test_no_dataset_or_a_foreign_one_gives_synthetic_images(local_storage, tmp_path):
    data = write_dataset(local_storage, namespace="team-b", train_images=1, val_images=1)
    none = _samples(local_storage, "", tmp_path / "a")
    assert none.source == "synthetic" and "names no dataset" in none.note
    foreign = _samples(local_storage, data.prefix, tmp_path / "b", namespace="default")
    assert foreign.source == "synthetic" and "not <namespace>/datasets/<job_id>/" in foreign.note
    large = _samples(local_storage, data.prefix, tmp_path / "c", namespace="team-b", max_bytes=10)
    assert large.source == "synthetic" and "above 10" in large.note
    missing = _samples(local_storage, "team-b/datasets/nothing-here/", tmp_path / "d", "team-b")
    assert missing.source == "synthetic" and "no val-*.tfrecord" in missing.note


def test_synthetic_images_mix_formats_and_shapes(local_storage, tmp_path):
    found = _samples(local_storage, "", tmp_path, count=4)
    seen = set()
    for path in found.paths:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            seen.add((image.format, image.size))
    assert {fmt for fmt, _ in seen} == {"PNG", "JPEG"}
    assert {(96, 96), (120, 72), (72, 120)} <= {size for _, size in seen}


def test_records_that_are_no_examples_give_synthetic_images(local_storage, tmp_path):
    from services.exporter.tfrecord import frame

    prefix = "default/datasets/job-x/"
    local_storage.put(prefix + "val-00000-of-00001.tfrecord", frame(b"\xff\xfe not a proto"))
    found = _samples(local_storage, prefix, tmp_path)
    assert found.source == "synthetic" and "val-00000-of-00001.tfrecord" in found.note
