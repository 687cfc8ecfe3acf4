"""The handler's refusals (before any training), cancel, and starting from a base model."""

from __future__ import annotations

import asyncio

import pytest

from preannotate.errors import (
    Cancelled,
    FailedPrecondition,
    Interrupted,
    InvalidArgument,
    Unavailable,
    UnsafeName,
)
from preannotate.keys import models_root
from preannotate.storage import read_manifest
from preannotate.v1 import common_pb2
from services.trainer import handlers
from services.trainer import job as job_lib
from services.trainer.handlers import handle_dataset_exported
from services.trainer.run import TrainingRun
from tests.fakes import FakeContext
from tests.trainer.datasets import write_dataset

TINY = "batch_size=2;input_size=128;warmup_steps=0;eval=false;pretrained=false"


def _handle(msg, storage, settings, **ctx_args):
    ctx = FakeContext(storage, **ctx_args)
    return ctx, asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))


def _refused(msg, storage, settings, match):
    ctx = FakeContext(storage)
    with pytest.raises(InvalidArgument, match=match):
        asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))
    assert ctx.progress_steps() == []  # nothing trained
    assert storage.list(models_root(msg.namespace or "default")) == []  # nothing written
    return ctx


@pytest.mark.parametrize(
    ("model_type", "arguments", "match"),
    [
        ("yolo", "", "unknown model type 'yolo'; choose one of: ssd-mobilenet-v2-coco"),
        ("ssd-mobilenet-v2-coco", "epochs=many", "epochs='many' is not a whole number"),
        ("ssd-mobilenet-v2-coco", "colour=red", "unknown argument 'colour'"),
        ("ssd-mobilenet-v2-coco", "num_clones=2", "num_clones=2 is more than this machine has"),
        ("maskrcnn", "", "maskrcnn learns instance masks, and this dataset has none"),
    ],
)
def test_refused_before_any_training(storage, make_settings, model_type, arguments, match):
    data = write_dataset(storage, train_images=2, val_images=1)
    _refused(data.event(model_type, arguments), storage, make_settings(), match)


def test_nas_on_one_gpu_is_refused_before_any_training(storage, make_settings):
    data = write_dataset(storage, train_images=2, val_images=1)
    settings = make_settings(machine_type="gpu-1")
    assert settings.machine_gpus == 1
    _refused(
        data.event("frcnn-nas-coco", ""),
        storage,
        settings,
        "frcnn-nas-coco needs 2 or more GPUs and this is a machine type with 1 GPU",
    )


def test_base_model_of_another_namespace_is_refused(storage, make_settings):
    data = write_dataset(storage, train_images=2, val_images=1)
    base = common_pb2.ModelRef(namespace="other-team", name="birds", version=1)
    _refused(
        data.event("ssd-mobilenet-v2-coco", "", base_model=base),
        storage,
        make_settings(),
        "base model other-team/birds is in namespace 'other-team'.*same namespace",
    )


def test_missing_base_model_is_refused_and_leaves_nothing(storage, make_settings):
    data = write_dataset(storage, train_images=2, val_images=1)
    base = common_pb2.ModelRef(name="nothing-here")
    _refused(
        data.event("ssd-mobilenet-v2-coco", TINY, base_model=base),
        storage,
        make_settings(),
        "base model default/nothing-here: .*has no finished version",
    )


class _StatusWritesFail(FakeContext):
    async def report(self, **kwargs):
        raise Unavailable("job.status: the broker is down")


@pytest.mark.parametrize("context", [FakeContext, _StatusWritesFail])
def test_unfinished_dataset_is_refused(storage, make_settings, context):
    """Also when no status line can be written: that is logged, the job's own error stands."""
    data = write_dataset(storage, train_images=2, val_images=1)
    storage.delete_prefix(data.prefix)
    storage.put(data.prefix + "train-00000-of-00001.tfrecord", b"")
    ctx = context(storage)
    with pytest.raises(FailedPrecondition, match=r"has no manifest\.json"):
        asyncio.run(
            handle_dataset_exported(
                data.event("ssd-mobilenet-v2-coco", TINY), ctx, settings=make_settings()
            )
        )
    assert storage.list(models_root("default")) == []
    failed = [f for level, event, f in ctx.log.lines if event == "status report failed"]
    if context is _StatusWritesFail:  # the one line sent, "downloading dataset"
        assert len(failed) == 1 and "broker is down" in failed[0]["error"]
    else:
        assert failed == [] and "downloading dataset" in ctx.reports[0]["message"]


def test_the_lease_is_released_when_the_job_ends(storage, make_settings):
    """A job that failed for good (no dataset) lets its lease go: the next delivery,
    on any worker, takes the job at once with the next generation."""
    from preannotate.lease import Lease

    data = write_dataset(storage, train_images=2, val_images=1)
    storage.delete_prefix(data.prefix)
    msg = data.event("ssd-mobilenet-v2-coco", TINY)
    with pytest.raises(FailedPrecondition):
        asyncio.run(handle_dataset_exported(msg, FakeContext(storage), settings=make_settings()))
    current = Lease(storage, "default", msg.job_id, holder="x", ttl=60).current()
    assert current.generation == 1 and current.released and current.holder.startswith("trainer@")


def _held_by_another(storage, job_id: str):
    from preannotate.lease import Lease

    other = Lease(storage, "default", job_id, holder="other-worker", ttl=3600)
    assert other.try_acquire()
    return other


def test_a_job_another_worker_holds_is_not_run(storage, make_settings):
    """The partition moved while another worker trains the job: this delivery waits for
    the lease, then gives up with a retryable error having claimed and written nothing."""
    data = write_dataset(storage, train_images=2, val_images=1)
    msg = data.event("ssd-mobilenet-v2-coco", TINY)
    other = _held_by_another(storage, msg.job_id)
    ctx = FakeContext(storage)
    settings = make_settings(trainer_lease_wait_seconds=0)
    with pytest.raises(Unavailable, match="is held by other-worker"):
        asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))
    assert storage.list(models_root("default")) == [] and ctx.reports == []
    other.check()  # still the other worker's, untouched


def test_a_worker_that_lost_the_job_writes_nothing(storage, make_settings):
    """The job's lease taken over before this worker's first write: it stops with
    ``Interrupted`` (record left uncommitted) and writes and deletes nothing."""
    from preannotate.catalog import default_catalog
    from preannotate.lease import Lease, LeaseLost

    data = write_dataset(storage, train_images=2, val_images=1)
    msg = data.event("ssd-mobilenet-v2-coco", TINY)
    settings = make_settings()
    request = handlers.validate(msg, settings, default_catalog())
    now = [0.0]
    mine = Lease(storage, "default", msg.job_id, holder="me", ttl=10, clock=lambda: now[0])
    assert mine.try_acquire()
    run = job_lib.claim(storage=storage, request=request)
    before = storage.list(models_root("default"))
    now[0] = 100.0  # this worker stalled; another took the job over
    assert Lease(
        storage, "default", msg.job_id, holder="new", ttl=10, clock=lambda: now[0]
    ).try_acquire()
    with pytest.raises(LeaseLost) as caught:
        job_lib.train(
            storage=storage,
            settings=settings,
            run=run,
            catalog=default_catalog(),
            reporter=_Silent(),
            fence=mine.check,
        )
    assert isinstance(caught.value, Interrupted)
    assert storage.list(models_root("default")) == before  # not even training.json


class _Silent:
    def status(self, message, details):
        pass

    def progress(self, progress, details):
        pass


def test_validate_gives_the_job(make_settings):
    from preannotate.catalog import default_catalog
    from tests.trainer.datasets import TinyDataset

    data = TinyDataset("team", "j-1", "team/datasets/j-1/", ("a", "b"), 10, 2, False)
    request = handlers.validate(
        data.event("frcnn-res50-coco", "epochs=5"),
        make_settings(machine_type="gpu-4"),
        default_catalog(),
    )
    assert request.arguments.num_clones == 4 and request.model_name == "frcnn-res50-coco-task7"
    assert request.classes == ("a", "b") and request.dataset_prefix == "team/datasets/j-1/"
    bad = data.event("frcnn-res50-coco", "")
    bad.dataset_prefix = "other/datasets/j-1/"
    with pytest.raises(InvalidArgument, match="not under team/datasets/"):
        handlers.validate(bad, make_settings(), default_catalog())


@pytest.mark.tf
def test_base_model_with_other_classes_keeps_backbone_and_says_so(ssd_run):
    storage, settings, parent = ssd_run["storage"], ssd_run["settings"], ssd_run["name"]
    other = write_dataset(
        storage,
        job_id="job-b",
        classes=("rect", "ellipse", "triangle"),
        train_images=2,
        val_images=1,
        seed=3,
    )
    msg = other.event(
        "ssd-mobilenet-v2-coco",
        "epochs=2;" + TINY,
        model_name="child",
        base_model=common_pb2.ModelRef(name=parent),
    )
    ctx, outcome = _handle(msg, storage, settings)
    details = ctx.details()
    assert details["init"] == f"base default/{parent}/1"
    assert "class heads start fresh" in details["init_note"]
    assert ctx.progress_steps() == [1, 2]
    child = outcome.emits[0].message
    assert list(child.classes) == ["rect", "ellipse", "triangle"]
    # Every report names the model version, from the run (no string parsed back).
    model = common_pb2.ModelRef(namespace="default", name="child", version=1)
    assert ctx.reports and all(r["model"] == model for r in ctx.reports)
    manifest = read_manifest(storage, child.model_prefix)
    assert manifest["init"]["init"] == f"base default/{parent}/1"
    assert "class heads start fresh" in manifest["init"]["init_note"]
    assert manifest["base_model"] == f"default/{parent}"
    assert manifest["metrics"] == {} and dict(child.metrics) == {}  # eval=false honoured


@pytest.mark.tf
def test_shutdown_leaves_a_checkpoint_then_cancel_removes_the_version(ssd_run):
    """A job from a base model of the same classes (restored whole): a shutdown after step 2
    checkpoints and leaves it; delivered again, it resumes from step 2 and is cancelled
    before its next step, which deletes everything of its version."""
    storage, settings = ssd_run["storage"], ssd_run["settings"]
    msg = ssd_run["msg"].__deepcopy__()
    msg.job_id = "job-c"
    msg.training.model_name = "sibling"
    msg.training.arguments = "epochs=50;" + TINY
    msg.training.base_model.CopyFrom(common_pb2.ModelRef(name=ssd_run["name"], version=1))

    first = FakeContext(storage, stop_after_steps=2)
    with pytest.raises(Interrupted, match="stopped at step 2 of 50"):
        asyncio.run(handle_dataset_exported(msg, first, settings=settings))
    assert first.details()["init"] == f"base default/{ssd_run['name']}/1"
    assert "init_note" not in first.details()  # same classes: restored whole
    assert first.progress_steps() == [1, 2]
    kept = storage.list(models_root("default", "sibling"))
    assert "default/models/sibling/1/checkpoints/ckpt-2/ckpt-2.index" in kept
    assert not any(k.endswith("manifest.json") for k in kept)

    second = FakeContext(storage, cancel_after_steps=0)
    with pytest.raises(Cancelled, match="cancelled at step 2 of 50"):
        asyncio.run(handle_dataset_exported(msg, second, settings=settings))
    details = second.details()
    assert details["resumed_from_step"] == "2"
    assert details["init"] == f"base default/{ssd_run['name']}/1"
    assert second.progress_steps() == []
    assert storage.list(models_root("default", "sibling")) == []  # nothing half-written


def test_base_model_of_another_architecture_is_refused(storage, make_settings):
    settings = make_settings()
    data = write_dataset(storage, train_images=2, val_images=1)
    storage.put(
        "default/models/ssd/1/manifest.json",
        b'{"model_type": "ssd-mobilenet-v2-coco", "classes": ["rect", "ellipse"],'
        b' "checkpoint": "default/models/ssd/1/checkpoints/ckpt-1/ckpt-1"}',
    )
    msg = data.event(
        "frcnn-res50-coco",
        "epochs=1",
        model_name="rcnn",
        base_model=common_pb2.ModelRef(name="ssd"),
    )
    ctx = FakeContext(storage)
    with pytest.raises(InvalidArgument, match="same architecture and backbone"):
        asyncio.run(handle_dataset_exported(msg, ctx, settings=settings))
    assert ctx.progress_steps() == []
    assert storage.list(models_root("default", "rcnn")) == []


def test_an_event_without_namespace_is_the_services(make_settings):
    from preannotate.catalog import default_catalog
    from tests.trainer.datasets import TinyDataset

    data = TinyDataset("team", "j-1", "team/datasets/j-1/", ("a",), 10, 2, False)
    msg = data.event("ssd-mobilenet-v2-coco")
    msg.namespace = ""
    request = handlers.validate(msg, make_settings(namespace="team"), default_catalog())
    assert request.namespace == "team" and request.dataset_prefix == "team/datasets/j-1/"
    with pytest.raises(InvalidArgument, match="not under default/datasets/"):
        handlers.validate(msg, make_settings(), default_catalog())


def test_a_job_of_no_cvat_task_is_named_after_its_model_type(make_settings):
    from preannotate.catalog import default_catalog
    from tests.trainer.datasets import TinyDataset

    data = TinyDataset("team", "j-1", "team/datasets/j-1/", ("a",), 10, 2, False)
    msg = data.event("ssd-mobilenet-v2-coco")
    msg.cvat.task_id = 0
    request = handlers.validate(msg, make_settings(), default_catalog())
    assert request.model_name == "ssd-mobilenet-v2-coco" and request.origin == {}


def test_the_run_names_its_version_and_keys_and_finds_its_finished_model(storage, make_settings):
    from preannotate.catalog import default_catalog

    data = write_dataset(storage, train_images=2, val_images=1)
    msg = data.event("ssd-mobilenet-v2-coco", model_name="m")
    request = handlers.validate(msg, make_settings(), default_catalog())
    run = job_lib.claim(storage=storage, request=request)
    assert run.version == 1 and run.request is request
    assert run.prefix == "default/models/m/1/" and str(run) == "default/m/1"
    assert run.training_key == "default/models/m/1/training.json"
    assert run.tensorboard_prefix == "default/models/m/1/tensorboard/"
    assert job_lib.claim(storage=storage, request=request) == run  # found again
    other = handlers.validate(
        data.event("ssd-mobilenet-v2-coco", model_name="m", job_id="j-2"),
        make_settings(),
        default_catalog(),
    )
    assert job_lib.claim(storage=storage, request=other).version == 2
    assert job_lib.find_finished(storage=storage, run=run) is None
    with pytest.raises(UnsafeName):
        TrainingRun(request=request, version=0)
