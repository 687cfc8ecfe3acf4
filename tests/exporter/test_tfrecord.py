"""The TFRecord container written without TensorFlow, read back by tf.data."""

from __future__ import annotations

import os

import pytest

from services.exporter.tfrecord import RECORD_OVERHEAD, ShardedWriter, frame, read_records

RECORDS = [b"", b"x", os.urandom(1000), bytes(range(256)) * 300]


@pytest.mark.tf
def test_tf_data_reads_what_we_frame(tmp_path):
    import tensorflow as tf

    path = tmp_path / "r.tfrecord"
    path.write_bytes(b"".join(frame(r) for r in RECORDS))
    read = [t.numpy() for t in tf.data.TFRecordDataset(str(path))]
    assert read == RECORDS


@pytest.mark.tf
def test_tf_data_finds_a_damaged_record(tmp_path):
    import tensorflow as tf

    path = tmp_path / "bad.tfrecord"
    blob = bytearray(frame(b"hello world"))
    blob[14] ^= 0xFF  # inside the data: its CRC no longer matches
    path.write_bytes(bytes(blob))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))
    with pytest.raises(ValueError, match="bad data CRC"):
        read_records(path)


@pytest.mark.tf
def test_tf_writes_what_we_read(tmp_path):
    import tensorflow as tf

    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in RECORDS:
            writer.write(record)
    assert read_records(path) == RECORDS
    assert path.read_bytes() == b"".join(frame(r) for r in RECORDS)


def test_shards_close_before_passing_the_byte_limit(tmp_path):
    writer = ShardedWriter(tmp_path, "train", max_bytes=3 * (100 + RECORD_OVERHEAD))
    for i in range(7):
        writer.write(bytes([i]) * 100)
    shards = writer.close()
    assert [s.path.name for s in shards] == [
        "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord",
    ]
    assert [s.records for s in shards] == [3, 3, 1]
    assert [r[0] for s in shards for r in read_records(s.path)] == list(range(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == [s.path.name for s in shards]


def test_a_record_larger_than_a_shard_gets_its_own(tmp_path):
    writer = ShardedWriter(tmp_path, "val", max_bytes=10)
    writer.write(b"a" * 50)
    writer.write(b"b" * 50)
    assert [s.records for s in writer.close()] == [1, 1]


def test_shards_by_image_count(tmp_path):
    writer = ShardedWriter(tmp_path, "train", max_bytes=1 << 30, max_records=2)
    for i in range(5):
        writer.write(bytes([i]))
    assert [s.records for s in writer.close()] == [2, 2, 1]


def test_abort_leaves_nothing(tmp_path):
    writer = ShardedWriter(tmp_path, "train", max_bytes=10)
    for i in range(3):
        writer.write(bytes([i]) * 20)
    writer.abort()
    assert list(tmp_path.iterdir()) == []
