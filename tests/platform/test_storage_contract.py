"""The storage contract: the local folder and moto's S3 server behave alike."""

from __future__ import annotations

import json

import pytest

from preannotate.errors import NotFound, UnsafeName
from preannotate.storage import MANIFEST, PrefixWriter, is_complete, read_manifest


@pytest.fixture(params=["local", "s3"])
def storage(request):
    return request.getfixturevalue(f"{request.param}_storage")


def test_put_get_list_delete(storage):
    storage.put("team-a/datasets/job-1/train-00000.tfrecord", b"abc")
    storage.put("team-a/datasets/job-1/label_map.pbtxt", b"item {}")
    storage.put("team-a/datasets/job-2/x.bin", b"")
    assert storage.get("team-a/datasets/job-1/train-00000.tfrecord") == b"abc"
    assert storage.exists("team-a/datasets/job-2/x.bin")
    assert not storage.exists("team-a/datasets/job-3/x.bin")
    assert storage.list("team-a/datasets/job-1/") == [
        "team-a/datasets/job-1/label_map.pbtxt",
        "team-a/datasets/job-1/train-00000.tfrecord",
    ]
    assert storage.delete_prefix("team-a/datasets/job-1/") == 2
    assert storage.list("team-a/datasets/job-1/") == []
    assert storage.list("team-a/") == ["team-a/datasets/job-2/x.bin"]
    with pytest.raises(NotFound):
        storage.get("team-a/datasets/job-1/label_map.pbtxt")


def test_files_round_trip(storage, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: multipart on S3
    storage.upload_file("ns/models/m/1/checkpoints/ckpt-1.data", src)
    dest = tmp_path / "out" / "copy.bin"
    storage.download_file("ns/models/m/1/checkpoints/ckpt-1.data", dest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(NotFound):
        storage.download_file("ns/models/m/1/checkpoints/none", tmp_path / "none")


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "/abs/key",
        "ns/../other/x",
        "ns/./x",
        "ns//x",
        "ns\\x",
        "",
        "ns/.hidden",
    ],
)
def test_unsafe_keys_are_refused(storage, key):
    with pytest.raises(UnsafeName):
        storage.put(key, b"x")
    with pytest.raises(UnsafeName):
        storage.get(key)


def test_a_prefix_is_finished_only_when_its_manifest_is_written_last(storage, tmp_path):
    prefix = "team-a/models/dogs/3/"
    (tmp_path / "tree" / "checkpoints").mkdir(parents=True)
    (tmp_path / "tree" / "checkpoints" / "ckpt-1.index").write_bytes(b"i")
    with PrefixWriter(storage, prefix) as out:
        out.put("classes.csv", b"dog,1\n")
        out.upload_tree(tmp_path / "tree")
        assert not is_complete(storage, prefix)
        assert read_manifest(storage, prefix) is None
        written = out.commit({"classes": ["dog"]})
    assert is_complete(storage, prefix)
    manifest = read_manifest(storage, prefix)
    assert manifest == json.loads(json.dumps(written))
    assert sorted(manifest["files"]) == ["checkpoints/ckpt-1.index", "classes.csv"]
    assert manifest["files"]["classes.csv"]["size"] == 6
    assert storage.list(prefix)[-1] == prefix + MANIFEST or prefix + MANIFEST in storage.list(
        prefix
    )


def test_a_failed_writer_leaves_nothing_behind(storage):
    prefix = "team-a/datasets/job-9/"
    with pytest.raises(RuntimeError), PrefixWriter(storage, prefix) as out:
        out.put("train-00000.tfrecord", b"partial")
        raise RuntimeError("conversion failed")
    assert storage.list(prefix) == []
    assert not is_complete(storage, prefix)
