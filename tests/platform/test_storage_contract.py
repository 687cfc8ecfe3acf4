"""The storage contract: the local folder and moto's S3 server behave alike."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

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


@pytest.fixture(params=["local", "s3", "s3-fallback"])
def creating_storage(request):
    """Each way a store creates a key only if absent: a hard link, S3's If-None-Match,
    and the candidates fallback of a store without conditional writes."""
    if request.param == "s3-fallback":
        storage = request.getfixturevalue("s3_storage")
        storage.conditional_writes = False
        return storage
    return request.getfixturevalue(f"{request.param}_storage")


def _race(storage, key: str, creators: int) -> list[int]:
    """``creators`` threads create ``key`` at once; the indexes of those that won."""
    barrier = threading.Barrier(creators)

    def create(i: int) -> bool:
        barrier.wait()
        return storage.put_if_absent(key, b"creator-%d" % i)

    with ThreadPoolExecutor(creators) as pool:
        won = list(pool.map(create, range(creators)))
    return [i for i, ok in enumerate(won) if ok]


def test_put_if_absent_creates_a_key_once(creating_storage):
    storage = creating_storage
    assert storage.put_if_absent("ns/jobs/j/lease/1.json", b"first")
    assert not storage.put_if_absent("ns/jobs/j/lease/1.json", b"second")
    assert storage.get("ns/jobs/j/lease/1.json") == b"first"
    storage.put("ns/x.bin", b"plain")
    assert not storage.put_if_absent("ns/x.bin", b"other")
    assert storage.list("ns/") == ["ns/jobs/j/lease/1.json", "ns/x.bin"]  # nothing else left
    with pytest.raises(UnsafeName):
        storage.put_if_absent("ns/../x", b"")


def test_of_concurrent_creators_exactly_one_wins(creating_storage):
    storage = creating_storage
    for n in range(5):
        key = f"ns/models/m/{n + 1}/claim.json"
        winners = _race(storage, key, creators=6)
        assert len(winners) == 1, f"round {n}: {winners} all created {key}"
        assert storage.get(key) == b"creator-%d" % winners[0]
    assert all(k.endswith("/claim.json") for k in storage.list("ns/"))


def test_a_store_that_answers_501_gets_the_fallback(s3_storage):
    """A store that does not implement If-None-Match (501 NotImplemented) is detected on
    the first conditional create, which then goes through the candidates fallback."""
    from botocore.awsrequest import AWSResponse

    refused = []

    def not_implemented(request, **_):
        if "If-None-Match" in request.headers:
            refused.append(request.url)
            body = b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>"
            return AWSResponse(request.url, 501, {}, _Raw(body))
        return None

    s3_storage._s3.meta.events.register("before-send.s3.PutObject", not_implemented)
    assert s3_storage.put_if_absent("ns/a.json", b"1")
    assert not s3_storage.put_if_absent("ns/a.json", b"2")
    assert s3_storage.get("ns/a.json") == b"1" and len(refused) == 1
    assert not s3_storage.conditional_writes
    assert s3_storage.list("ns/") == ["ns/a.json"]


class _Raw:
    """The raw body of a botocore response built in a test."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body
