"""The trainer's storage side, without TensorFlow: checkpoints, versions, dataset, progress."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from preannotate.errors import FailedPrecondition
from preannotate.keys import model_prefix
from services.trainer import checkpoints, dataset, metrics, versions
from services.trainer.progress import ProgressClock, TrainProgress
from tests.trainer.datasets import write_dataset

PREFIX = model_prefix("default", "m", 1)


def _ckpt(folder, step, shards=1):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        (folder / f"ckpt-{step}.data-{i:05d}-of-{shards:05d}").write_bytes(b"data%d" % step)
    (folder / f"ckpt-{step}.index").write_bytes(b"index%d" % step)


def test_upload_mirrors_the_local_checkpoints(storage, tmp_path):
    local = tmp_path / "ckpts"
    uploaded: set[int] = set()
    _ckpt(local, 3)
    _ckpt(local, 6, shards=2)
    assert checkpoints.upload(storage, local, PREFIX, uploaded) == [3, 6]
    assert storage.exists(PREFIX + "checkpoints/ckpt-6/ckpt-6.data-00001-of-00002")
    for name in [f"ckpt-3.{s}" for s in ("index", "data-00000-of-00001")]:
        (local / name).unlink()  # the manager dropped an old one
    _ckpt(local, 9)
    assert checkpoints.upload(storage, local, PREFIX, uploaded) == [6, 9]
    assert checkpoints.stored_steps(storage, PREFIX) == [6, 9]
    assert checkpoints.latest(storage, PREFIX).key == PREFIX + "checkpoints/ckpt-9/ckpt-9"


def test_latest_skips_a_checkpoint_whose_upload_broke(storage, tmp_path):
    _ckpt(tmp_path / "a", 5, shards=2)
    checkpoints.upload(storage, tmp_path / "a", PREFIX, set())
    storage.put(PREFIX + "checkpoints/ckpt-8/ckpt-8.data-00000-of-00002", b"half")  # no index
    storage.put(PREFIX + "checkpoints/ckpt-7/ckpt-7.index", b"i")  # index, data missing
    storage.put(PREFIX + "checkpoints/ckpt-9/ckpt-9.index", b"i")  # one of two shards
    storage.put(PREFIX + "checkpoints/ckpt-9/ckpt-9.data-00001-of-00002", b"half")
    ref = checkpoints.latest(storage, PREFIX)
    assert ref.step == 5 and len(ref.files) == 3
    local = tmp_path / "resume"
    assert checkpoints.download_latest(storage, PREFIX, local).step == 5
    assert (local / "checkpoint").read_text().startswith('model_checkpoint_path: "ckpt-5"')
    assert (local / "ckpt-5.data-00001-of-00002").read_bytes() == b"data5"


def test_no_checkpoint_to_resume(storage, tmp_path):
    assert checkpoints.download_latest(storage, PREFIX, tmp_path) is None


def test_versions_claims(storage):
    assert versions.claim(storage, "default", "m", "job-a", {}) == 1
    assert versions.claim(storage, "default", "m", "job-b", {}) == 2
    assert versions.claim(storage, "default", "m", "job-a", {}) == 1
    assert versions.find_claim(storage, "default", "m", "job-b") == 2
    assert versions.find_claim(storage, "default", "m", "job-c") is None


def test_a_version_created_by_another_job_is_left_to_it(storage):
    """job-x created version 1's claim.json; job-y, whose marker there is stale (it lost
    the race and died before withdrawing), takes version 2 and drops the stale marker."""
    assert versions.claim(storage, "default", "m", "job-x", {}) == 1
    stale = versions.claim_prefix("default", "m", 1, "job-y") + versions.CLAIM_FILE
    storage.put(stale, b"{}")
    assert versions.claim(storage, "default", "m", "job-y", {}) == 2
    assert versions.find_claim(storage, "default", "m", "job-y") == 2
    assert not storage.exists(stale)


def test_a_job_that_died_between_its_two_writes_keeps_its_version(storage):
    marker = versions.claim_prefix("default", "m", 1, "job-a") + versions.CLAIM_FILE
    storage.put(marker, b"{}")  # marker written, claim.json not yet
    assert versions.claim(storage, "default", "m", "job-a", {}) == 1
    assert b'"job_id": "job-a"' in storage.get("default/models/m/1/claim.json")
    assert versions.claim(storage, "default", "m", "job-b", {}) == 2


@pytest.fixture(params=["local", "s3"])
def either_storage(request):
    return request.getfixturevalue(f"{request.param}_storage")


def test_jobs_claiming_one_model_at_the_same_instant_get_distinct_versions(either_storage):
    jobs = [f"job-{i}" for i in range(6)]
    barrier = threading.Barrier(len(jobs))

    def claim(job_id: str) -> int:
        barrier.wait()
        return versions.claim(either_storage, "default", "m", job_id, {})

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(claim, jobs))
    assert sorted(got) == [1, 2, 3, 4, 5, 6], got
    for job_id, version in zip(jobs, got, strict=True):  # each found again on redelivery
        assert versions.claim(either_storage, "default", "m", job_id, {}) == version


def test_dataset_fetch_downloads_once(storage, tmp_path):
    data = write_dataset(storage, train_images=2, val_images=1)
    local = dataset.fetch(storage, data.prefix, tmp_path / "d")
    assert [p.name for p in local.train_files] == ["train-00000-of-00001.tfrecord"]
    assert local.val_pattern.endswith("val-*.tfrecord")
    stamp = local.train_files[0].stat().st_mtime_ns
    again = dataset.fetch(storage, data.prefix, tmp_path / "d")
    assert again.train_files[0].stat().st_mtime_ns == stamp  # kept: same size as the manifest
    storage.delete_prefix(data.prefix)
    with pytest.raises(FailedPrecondition, match=r"no manifest\.json"):
        dataset.fetch(storage, data.prefix, tmp_path / "e")


def test_progress_clock():
    now = [100.0]
    clock = ProgressClock(5.0, batch_size=4, clock=lambda: now[0])
    clock.start(0)
    assert clock.due(1, 10, first=True)
    now[0] = 102.0
    assert not clock.due(2, 10)
    assert clock.due(10, 10)  # the last step always reports
    now[0] = 105.0
    assert clock.due(3, 10)
    images, eta = clock.measure(5, 10)  # 5 steps of 4 images in 5 s
    assert images == pytest.approx(4.0) and eta == pytest.approx(5.0)


def test_gauges_follow_a_job_and_go_when_it_ends():
    from prometheus_client import REGISTRY

    progress = TrainProgress(5, 10, 0.5, 0.01, 12.0, 30.0)
    metrics.observe("job-g", "maskrcnn", progress)
    labels = {"job_id": "job-g", "model_type": "maskrcnn"}
    assert REGISTRY.get_sample_value("preannotate_trainer_step", labels) == 5
    assert REGISTRY.get_sample_value("preannotate_trainer_progress_ratio", labels) == 0.5
    assert REGISTRY.get_sample_value("preannotate_trainer_eta_seconds", labels) == 30
    metrics.forget("job-g", "maskrcnn")
    assert REGISTRY.get_sample_value("preannotate_trainer_step", labels) is None


def test_a_worker_prunes_only_the_checkpoints_it_uploaded(storage, tmp_path):
    """Two workers on one version (before fencing stopped one): each one's pruning
    leaves the other's checkpoints alone."""
    mine, theirs = set(), set()
    _ckpt(tmp_path / "a", 3)
    checkpoints.upload(storage, tmp_path / "a", PREFIX, mine)
    _ckpt(tmp_path / "b", 5)
    checkpoints.upload(storage, tmp_path / "b", PREFIX, theirs)
    for path in (tmp_path / "a").glob("ckpt-3.*"):
        path.unlink()  # a's manager dropped its old one
    _ckpt(tmp_path / "a", 6)
    assert checkpoints.upload(storage, tmp_path / "a", PREFIX, mine) == [6]
    assert checkpoints.stored_steps(storage, PREFIX) == [5, 6]  # b's 5 kept, a's 3 gone


def test_a_resumed_worker_adopts_the_older_checkpoints_and_drops_broken_newer_ones(
    storage, tmp_path
):
    _ckpt(tmp_path / "old", 2)
    _ckpt(tmp_path / "old", 4)
    checkpoints.upload(storage, tmp_path / "old", PREFIX, set())
    storage.put(PREFIX + "checkpoints/ckpt-6/ckpt-6.data-00000-of-00001", b"half")  # no index
    owned = checkpoints.adopt(storage, PREFIX, resumed=4)
    assert owned == {2, 4} and checkpoints.stored_steps(storage, PREFIX) == [2, 4]
    local = tmp_path / "new"
    _ckpt(local, 6)
    checkpoints.upload(storage, local, PREFIX, owned)
    assert checkpoints.stored_steps(storage, PREFIX) == [6]  # its own: 2 and 4 pruned


def test_a_worker_whose_lease_was_taken_uploads_and_deletes_nothing(storage, tmp_path):
    from preannotate.lease import Lease, LeaseLost

    now = [0.0]
    first = Lease(storage, "default", "job-1", holder="a", ttl=10, clock=lambda: now[0])
    assert first.try_acquire()
    uploaded: set[int] = set()
    _ckpt(tmp_path / "a", 3)
    checkpoints.upload(storage, tmp_path / "a", PREFIX, uploaded, first.check)
    now[0] = 11.0  # a stalled past its lease; b takes the job over
    second = Lease(storage, "default", "job-1", holder="b", ttl=10, clock=lambda: now[0])
    assert second.try_acquire()
    before = storage.list(PREFIX)
    for path in (tmp_path / "a").glob("ckpt-3.*"):
        path.unlink()
    _ckpt(tmp_path / "a", 6)
    with pytest.raises(LeaseLost):
        checkpoints.upload(storage, tmp_path / "a", PREFIX, uploaded, first.check)
    with pytest.raises(LeaseLost):
        checkpoints.adopt(storage, PREFIX, resumed=None, fence=first.check)
    assert storage.list(PREFIX) == before
