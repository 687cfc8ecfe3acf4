"""WeightsStore: pull from a local mirror, verify, install, refuse, import."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import tarfile

import numpy as np
import pytest

from preannotate import layout
from preannotate.errors import FailedPrecondition
from preannotate.weights import WeightsStore, source_for
from tests.weights.conftest import VALUES, tar_gz

SSD = "ssd-mobilenet-v2-coco"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(storage, installed, tmp_path):
    import tensorflow as tf

    files = layout.require_checkpoint(storage, installed.key)
    prefix = layout.download_checkpoint(storage, files, tmp_path / "down")
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE") for k in VALUES}


def test_pull_from_mirror_installs_checkpoint_and_manifest(
    local_storage, mirror, checkpoints, tmp_path
):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    store = WeightsStore(local_storage, mirror=mirror.url)
    assert store.installed(SSD) is None
    seen = []
    found = store.pull(SSD, progress=lambda done, total: seen.append((done, total)))

    sha = checkpoints.mobilenet_sha256
    assert found.sha256 == sha
    assert found.url == f"{mirror.url}/ckpt-180648.index"
    assert (found.format, found.covers, found.dataset) == ("tf-checkpoint", "backbone", "imagenet")
    folder = f"weights/{SSD}/{sha[:12]}/"
    assert found.key == folder + "ckpt-180648"
    assert local_storage.list(f"weights/{SSD}/") == sorted(
        [
            folder + "ckpt-180648.data-00000-of-00001",
            folder + "ckpt-180648.index",
            f"weights/{SSD}/manifest.json",
            f"weights/{SSD}/pin/pinned.json",
        ]
    )
    assert store.installed(SSD) == found
    assert store.pinned(SSD) == sha
    manifest = json.loads(local_storage.get(f"weights/{SSD}/manifest.json"))
    assert manifest["reference"] == source_for(SSD).reference
    # The stored checkpoint is the one served, readable by TensorFlow.
    values = _read(local_storage, found, tmp_path)
    for name, value in VALUES.items():
        np.testing.assert_array_equal(values[name], value)
    assert seen[-1][0] == seen[-1][1] == checkpoints.mobilenet[1].stat().st_size
    # ensure() does not fetch again.
    mirror.requests.clear()
    assert store.ensure(SSD) == found
    assert mirror.requests == []


def test_installed_is_none_when_a_shard_is_gone(local_storage, mirror, checkpoints):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    store = WeightsStore(local_storage, mirror=mirror.url)
    found = store.pull(SSD)
    (local_storage.root / f"{found.key}.data-00000-of-00001").unlink()
    assert store.installed(SSD) is None


def test_pull_of_an_archive_finds_its_single_checkpoint(local_storage, mirror, checkpoints):
    mirror.files["/resnet-101-i224.tar.gz"] = checkpoints.archive
    store = WeightsStore(local_storage, mirror=mirror.url)
    found = store.pull("frcnn-res101-coco")
    assert found.sha256 == hashlib.sha256(checkpoints.archive).hexdigest()
    assert found.key.endswith(f"/{found.sha256[:12]}/ckpt-7")
    assert layout.complete_checkpoint(local_storage, found.key) is not None


def test_published_hash_mismatch_is_refused_with_nothing_stored(local_storage, mirror, checkpoints):
    source = source_for("frcnn-nas-coco")
    mirror.files[f"/{source.file_name}"] = checkpoints.h5.read_bytes()
    store = WeightsStore(local_storage, mirror=mirror.url)
    with pytest.raises(FailedPrecondition) as info:
        store.pull("frcnn-nas-coco")
    message = str(info.value)
    assert f"is not the published {source.md5}" in message
    assert "preannotate weights import frcnn-nas-coco FILE" in message
    assert local_storage.list("weights/") == []


def test_truncated_download_is_refused_with_nothing_stored(local_storage, mirror, checkpoints):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    mirror.short.add("/ckpt-180648.data-00000-of-00001")
    store = WeightsStore(local_storage, mirror=mirror.url)
    with pytest.raises(FailedPrecondition, match="cut short"):
        store.pull(SSD)
    assert local_storage.list("weights/") == []


def test_unreachable_mirror_names_the_ways_out(local_storage):
    store = WeightsStore(local_storage, mirror=f"http://127.0.0.1:{_free_port()}", timeout=5)
    with pytest.raises(FailedPrecondition) as info:
        store.pull(SSD)
    message = str(info.value)
    assert "cannot reach the server" in message
    assert f"preannotate weights pull {SSD}" in message
    assert "PREANNOTATE_WEIGHTS_MIRROR" in message
    assert f"preannotate weights import {SSD} FILE" in message
    assert local_storage.list("weights/") == []


def test_missing_file_on_the_mirror_is_an_http_error(local_storage, mirror):
    store = WeightsStore(local_storage, mirror=mirror.url)
    with pytest.raises(FailedPrecondition, match="HTTP 404"):
        store.pull(SSD)
    assert local_storage.list("weights/") == []


def test_a_later_fetch_that_differs_from_the_first_is_refused(local_storage, mirror, checkpoints):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    store = WeightsStore(local_storage, mirror=mirror.url)
    first = store.pull(SSD)
    before = local_storage.list("weights/")
    mirror.serve_checkpoint(checkpoints.other)
    with pytest.raises(FailedPrecondition, match="recorded at this deployment's first fetch"):
        store.pull(SSD)
    assert local_storage.list("weights/") == before
    assert store.installed(SSD) == first
    # The same file again is fine.
    mirror.serve_checkpoint(checkpoints.mobilenet)
    assert store.pull(SSD) == first


def test_a_per_model_url_wins_over_the_mirror(local_storage, mirror, checkpoints):
    mirror.serve_checkpoint(checkpoints.mobilenet, under="/elsewhere")
    url = f"{mirror.url}/elsewhere/ckpt-180648.index"
    store = WeightsStore(local_storage, mirror=f"{mirror.url}/nothing-here", urls={SSD: url})
    assert store.url_for(SSD) == url
    assert store.pull(SSD).url == url
    assert all(r.startswith("/elsewhere/") for r in mirror.requests)


def test_without_mirror_the_official_url_is_used(local_storage):
    store = WeightsStore(local_storage)
    assert store.url_for("frcnn-nas-coco") == source_for("frcnn-nas-coco").url


def test_import_of_a_checkpoint_index(local_storage, checkpoints, tmp_path):
    store = WeightsStore(local_storage)
    found = store.import_file(SSD, checkpoints.mobilenet[0])
    assert found.url == "import:ckpt-180648.index"
    assert found.sha256 == checkpoints.mobilenet_sha256
    assert store.installed(SSD) == found
    values = _read(local_storage, found, tmp_path)
    np.testing.assert_array_equal(values["kernel"], VALUES["kernel"])


def test_import_of_an_archive_and_refusals(local_storage, checkpoints, tmp_path):
    store = WeightsStore(local_storage)
    archive = tmp_path / "resnet-101-i224.tar.gz"
    archive.write_bytes(checkpoints.archive)
    assert store.import_file("frcnn-res101-coco", archive).url == "import:resnet-101-i224.tar.gz"
    # An .h5 whose MD5 is not the published one; a file of no known kind.
    with pytest.raises(FailedPrecondition, match="is not the published"):
        store.import_file("frcnn-inc-resv2-atr-coco", checkpoints.h5)
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(FailedPrecondition, match="none of the kinds"):
        store.import_file(SSD, text)
    assert local_storage.list(f"weights/{SSD}/") == []


def test_import_of_the_published_h5(local_storage, checkpoints, monkeypatch):
    """The .h5 path end to end, with the entry's MD5 set to the test file's."""
    import preannotate.weights.store as store_module

    md5 = hashlib.md5(checkpoints.h5.read_bytes()).hexdigest()
    entry = dataclasses.replace(source_for("frcnn-nas-coco"), md5=md5)
    monkeypatch.setattr(store_module, "source_for", lambda model_type: entry)
    store = WeightsStore(local_storage)
    found = store.import_file("frcnn-nas-coco", checkpoints.h5)
    assert found.format == "keras-h5"
    assert found.key == f"weights/frcnn-nas-coco/{found.sha256[:12]}/NASNet-large-no-top.h5"
    assert store.installed("frcnn-nas-coco") == found
    assert local_storage.get(found.key) == checkpoints.h5.read_bytes()


def test_an_archive_with_an_unsafe_path_is_refused(local_storage, mirror, checkpoints):
    data = {f"../{p.name}": p.read_bytes() for p in checkpoints.mobilenet}
    mirror.files["/resnet-101-i224.tar.gz"] = tar_gz(data)
    store = WeightsStore(local_storage, mirror=mirror.url)
    with pytest.raises(FailedPrecondition, match="unsafe path"):
        store.pull("frcnn-res101-coco")
    assert local_storage.list("weights/") == []


def test_an_archive_with_two_checkpoints_is_refused(local_storage, mirror, checkpoints):
    data = {f"a/{p.name}": p.read_bytes() for p in checkpoints.mobilenet}
    data.update({f"b/{p.name}": p.read_bytes() for p in checkpoints.other})
    mirror.files["/resnet-101-i224.tar.gz"] = tar_gz(data)
    store = WeightsStore(local_storage, mirror=mirror.url)
    with pytest.raises(FailedPrecondition, match="exactly one checkpoint"):
        store.pull("frcnn-res101-coco")
    assert local_storage.list("weights/") == []


def test_an_archive_with_a_link_is_refused(local_storage, mirror):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("ckpt-1.index")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    mirror.files["/resnet-101-i224.tar.gz"] = buf.getvalue()
    store = WeightsStore(local_storage, mirror=mirror.url)
    with pytest.raises(FailedPrecondition, match="not a file or folder"):
        store.pull("frcnn-res101-coco")
    assert local_storage.list("weights/") == []


@pytest.mark.s3
def test_pull_into_s3(s3_storage, mirror, checkpoints, tmp_path):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    store = WeightsStore(s3_storage, mirror=mirror.url)
    found = store.pull(SSD)
    assert store.installed(SSD) == found
    values = _read(s3_storage, found, tmp_path)
    np.testing.assert_array_equal(values["bias"], VALUES["bias"])
    mirror.short.add("/ckpt-180648.index")
    s3_storage.delete_prefix("weights/")
    with pytest.raises(FailedPrecondition, match="cut short"):
        store.pull(SSD)
    assert s3_storage.list("weights/") == []


def test_a_failed_pull_never_deletes_what_a_concurrent_pull_installed(
    local_storage, checkpoints, monkeypatch
):
    """Two trainers pull at once: the first installs; the second, which found nothing
    installed when it began, fails at its manifest. The install stays whole."""
    first = WeightsStore(local_storage).import_file(SSD, checkpoints.mobilenet[0])

    second = WeightsStore(local_storage)
    seen = iter([None])  # what installed() said when the second pull began
    real_installed = second.installed
    monkeypatch.setattr(second, "installed", lambda m: next(seen, real_installed(m)))
    real_put = local_storage.put

    def put(key, data):
        if key.endswith("manifest.json"):
            raise OSError("the store went away")
        return real_put(key, data)

    monkeypatch.setattr(local_storage, "put", put)
    with pytest.raises(OSError):
        second.import_file(SSD, checkpoints.mobilenet[0])
    monkeypatch.undo()

    assert WeightsStore(local_storage).installed(SSD) == first
    assert layout.complete_checkpoint(local_storage, first.key)
