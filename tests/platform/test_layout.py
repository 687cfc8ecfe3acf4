"""The read side of the storage layout (preannotate.layout), on local storage."""

from __future__ import annotations

import pytest

from preannotate import keys, layout
from preannotate.errors import FailedPrecondition, NotFound, UnsafeName

CKPT = "team-a/models/m/1/checkpoints/ckpt-5/ckpt-5"


def _finish(storage, prefix: str, body: bytes = b"{}") -> None:
    storage.put(prefix + "other.txt", b"x")
    storage.put(prefix + "manifest.json", body)


def _checkpoint(storage, key: str, shards: int = 1, *, skip=()) -> None:
    storage.put(key + ".index", b"index")
    for shard in range(shards):
        if shard not in skip:
            storage.put(f"{key}.data-{shard:05d}-of-{shards:05d}", b"data%d" % shard)


def test_finished_versions_are_those_with_a_manifest(local_storage):
    _finish(local_storage, keys.model_prefix("team-a", "cars", 2))
    _finish(local_storage, keys.model_prefix("team-a", "cars", 10))
    _finish(local_storage, keys.model_prefix("team-a", "birds", 1))
    _finish(local_storage, keys.model_prefix("team-b", "cars", 1))
    _finish(local_storage, keys.serving_prefix("team-a", "cars", 2))
    local_storage.put(keys.model_prefix("team-a", "cars", 11) + "classes.csv", b"a")  # unfinished
    local_storage.put("team-a/models/cars/011/manifest.json", b"{}")  # not written by keys
    local_storage.put("team-a/models/Cars/1/manifest.json", b"{}")  # unsafe name
    local_storage.put("team-a/models/cars/3/sub/manifest.json", b"{}")  # not a version's

    assert [v.prefix for v in layout.finished(local_storage, "team-a")] == [
        "team-a/models/birds/1/",
        "team-a/models/cars/2/",
        "team-a/models/cars/10/",
    ]
    assert layout.finished_versions(local_storage, "team-a", "cars") == [2, 10]
    assert layout.finished(local_storage, "team-a", area=layout.SERVING) == [
        layout.Version("team-a", "cars", 2, layout.SERVING)
    ]
    everywhere = layout.finished(local_storage)
    assert [(v.namespace, v.name, v.version) for v in everywhere] == [
        ("team-a", "birds", 1),
        ("team-a", "cars", 2),
        ("team-a", "cars", 10),
        ("team-b", "cars", 1),
    ]
    assert layout.finished_versions(local_storage, "team-c", "cars") == []


def test_listing_checks_the_names_it_is_given(local_storage):
    with pytest.raises(UnsafeName):
        layout.finished(local_storage, "../x")
    with pytest.raises(UnsafeName):
        layout.finished_versions(local_storage, "team-a", "a/b")
    with pytest.raises(ValueError, match="needs its namespace"):
        layout.finished(local_storage, None, "cars")


def test_resolve_finds_the_newest_or_the_named_version(local_storage):
    with pytest.raises(NotFound, match="no finished version"):
        layout.resolve(local_storage, "default", "m")
    _finish(local_storage, keys.model_prefix("default", "m", 2), b'{"classes": []}')
    local_storage.put(keys.model_prefix("default", "m", 3) + "claims/j/claim.json", b"{}")
    assert layout.resolve(local_storage, "default", "m") == (2, {"classes": []})
    assert layout.resolve(local_storage, "default", "m", 2)[0] == 2
    with pytest.raises(NotFound, match="m/3 does not exist or is not finished"):
        layout.resolve(local_storage, "default", "m", 3)


def test_version_folders_include_unfinished_ones(local_storage):
    _finish(local_storage, keys.model_prefix("default", "m", 1))
    local_storage.put(keys.model_prefix("default", "m", 2) + "claims/j/claim.json", b"{}")
    assert layout.version_folders(local_storage, "default", "m") == {
        1: ["manifest.json", "other.txt"],
        2: ["claims/j/claim.json"],
    }


def test_a_complete_checkpoint_has_its_index_and_every_shard(local_storage):
    _checkpoint(local_storage, CKPT, shards=3)
    _checkpoint(local_storage, CKPT + "0")  # ckpt-50: another checkpoint beside it
    local_storage.put(CKPT.rpartition("/")[0] + "/nested/ckpt-5.index", b"i")
    found = layout.complete_checkpoint(local_storage, CKPT)
    assert found == layout.require_checkpoint(local_storage, CKPT)
    assert found.files == (
        "ckpt-5.data-00000-of-00003",
        "ckpt-5.data-00001-of-00003",
        "ckpt-5.data-00002-of-00003",
        "ckpt-5.index",
    )
    assert (found.stem, found.folder) == ("ckpt-5", "team-a/models/m/1/checkpoints/ckpt-5/")


@pytest.mark.parametrize(
    ("write", "missing"),
    [
        (lambda s: _checkpoint(s, CKPT, shards=3, skip={1}), "ckpt-5.data-00001-of-00003"),
        (lambda s: _checkpoint(s, CKPT, shards=2, skip={0, 1}), "ckpt-5.data-00000-of-<N>"),
        (lambda s: s.put(CKPT + ".data-00000-of-00001", b"d"), "ckpt-5.index"),
        (
            lambda s: (_checkpoint(s, CKPT, shards=1), s.put(CKPT + ".data-00001-of-00002", b"d")),
            "data shards of one count",
        ),
    ],
)
def test_a_checkpoint_missing_a_file_is_incomplete(local_storage, write, missing):
    write(local_storage)
    assert layout.complete_checkpoint(local_storage, CKPT) is None
    with pytest.raises(FailedPrecondition, match="is incomplete in storage") as err:
        layout.require_checkpoint(local_storage, CKPT)
    assert missing in str(err.value)


def test_no_checkpoint_at_all_is_not_found(local_storage):
    _checkpoint(local_storage, CKPT + "0")
    with pytest.raises(NotFound, match="ckpt-5 is not in storage"):
        layout.require_checkpoint(local_storage, CKPT)
    with pytest.raises(UnsafeName):
        layout.require_checkpoint(local_storage, "team-a/../ckpt-5")
    with pytest.raises(UnsafeName):
        layout.require_checkpoint(local_storage, "ckpt-5")


def test_download_copies_every_file_and_names_the_local_prefix(local_storage, tmp_path):
    _checkpoint(local_storage, CKPT, shards=2)
    found = layout.require_checkpoint(local_storage, CKPT)
    local = layout.download_checkpoint(local_storage, found, tmp_path / "c")
    assert local == tmp_path / "c" / "ckpt-5"
    assert sorted(p.name for p in local.parent.iterdir()) == sorted(found.files)
    assert (local.parent / "ckpt-5.data-00001-of-00002").read_bytes() == b"data1"
    (local.parent / "ckpt-5.index").write_bytes(b"cached")
    layout.download_checkpoint(local_storage, found, tmp_path / "c", keep_existing=True)
    assert (local.parent / "ckpt-5.index").read_bytes() == b"cached"
    layout.download_checkpoint(local_storage, found, tmp_path / "c")
    assert (local.parent / "ckpt-5.index").read_bytes() == b"index"
