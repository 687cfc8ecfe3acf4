"""What the handler checks before any TensorFlow runs: the event and the model prefix."""

from __future__ import annotations

import asyncio

import pytest

from preannotate.errors import FailedPrecondition, InvalidArgument, UnsafeName
from preannotate.storage import PrefixWriter
from preannotate.v1 import common_pb2, events_pb2
from services.converter import fetch
from services.converter.handlers import handle_model_trained
from services.converter.settings import ConverterSettings
from tests.fakes import FakeContext

PREFIX = "default/models/m1/2/"
CKPT = PREFIX + "checkpoints/ckpt-5/ckpt-5"


def event(**overrides) -> events_pb2.ModelTrained:
    values = {
        "job_id": "job-1",
        "namespace": "default",
        "model": common_pb2.ModelRef(namespace="default", name="m1", version=2),
        "model_type": "ssd-mobilenet-v2-coco",
        "model_prefix": PREFIX,
        "checkpoint": CKPT,
        "classes": ["a", "b"],
        "input_size": 128,
    }
    values.update(overrides)
    return events_pb2.ModelTrained(**values)


def model_prefix(
    storage,
    *,
    experiment=True,
    classes="id,name\n1,a\n2,b\n",
    data=("00000-of-00001",),
    index=True,
):
    with PrefixWriter(storage, PREFIX) as out:
        if index:
            out.put("checkpoints/ckpt-5/ckpt-5.index", b"index")
        for shard in data:
            out.put(f"checkpoints/ckpt-5/ckpt-5.data-{shard}", b"data")
        out.put("checkpoints/ckpt-50/ckpt-50.index", b"other")
        if experiment:
            out.put("experiment.yaml", b"task: {}\n")
        if classes is not None:
            out.put("classes.csv", classes.encode())
        out.commit({"kind": "model"})


def test_the_place_of_a_model():
    place = fetch.place_of(event(), default_namespace="default")
    assert place.model_prefix == PREFIX
    assert place.serving_prefix == "default/serving/m1/2/"
    assert place.base_path == "default/serving/m1"


@pytest.mark.parametrize(
    ("overrides", "error", "says"),
    [
        ({"model_prefix": "default/models/other/2/"}, InvalidArgument, "is not the model's place"),
        (
            {"model": common_pb2.ModelRef(namespace="other", name="m1", version=2)},
            InvalidArgument,
            "names a model of namespace",
        ),
        (
            {"model": common_pb2.ModelRef(namespace="default", version=2)},
            InvalidArgument,
            "names no model",
        ),
        (
            {"model": common_pb2.ModelRef(namespace="default", name="m1", version=0)},
            UnsafeName,
            "version",
        ),
        (
            {"model": common_pb2.ModelRef(namespace="default", name="../x", version=1)},
            UnsafeName,
            "model name",
        ),
    ],
)
def test_bad_events_are_refused(overrides, error, says):
    with pytest.raises(error, match=says):
        fetch.place_of(event(**overrides), default_namespace="default")


def test_checkpoint_keys_stay_under_the_model():
    place = fetch.place_of(event(), default_namespace="default")
    assert fetch.checkpoint_key(place, CKPT) == CKPT
    assert fetch.checkpoint_key(place, "checkpoints/ckpt-5/ckpt-5") == CKPT
    with pytest.raises(InvalidArgument, match="not under the model's prefix"):
        fetch.checkpoint_key(place, "default/models/other/1/checkpoints/ckpt-5")
    with pytest.raises(UnsafeName):
        fetch.checkpoint_key(place, "checkpoints/../../../other/ckpt-5")
    with pytest.raises(InvalidArgument, match="names no checkpoint"):
        fetch.checkpoint_key(place, "")


def test_fetch_copies_the_checkpoint_experiment_and_classes(local_storage, tmp_path):
    model_prefix(local_storage, data=("00000-of-00002", "00001-of-00002"))
    files = fetch.fetch_model(
        local_storage, event(), fetch.place_of(event(), default_namespace="default"), tmp_path / "m"
    )
    assert files.checkpoint == tmp_path / "m" / "checkpoint" / "ckpt-5"
    assert sorted(p.name for p in files.checkpoint.parent.iterdir()) == [
        "ckpt-5.data-00000-of-00002",
        "ckpt-5.data-00001-of-00002",
        "ckpt-5.index",
    ]
    assert files.experiment.read_text() == "task: {}\n"
    assert files.classes == ["a", "b"] and files.checkpoint_key == CKPT


def test_classes_csv_is_written_from_the_event_when_missing(local_storage, tmp_path):
    model_prefix(local_storage, classes=None)
    files = fetch.fetch_model(
        local_storage, event(), fetch.place_of(event(), default_namespace="default"), tmp_path / "m"
    )
    assert files.classes_csv.read_text() == "id,name\n1,a\n2,b\n"


@pytest.mark.parametrize(
    ("layout", "overrides", "error", "says"),
    [
        ({"experiment": False}, {}, FailedPrecondition, "has no experiment.yaml"),
        ({"data": ()}, {}, FailedPrecondition, "is incomplete in storage"),
        # One shard of two: the strict rule of preannotate.layout, as in the trainer.
        ({"data": ("00000-of-00002",)}, {}, FailedPrecondition, r"missing ckpt-5\.data-00001-of"),
        ({"data": (), "index": False}, {}, FailedPrecondition, "ckpt-5 is not in storage"),
        ({"index": False}, {}, FailedPrecondition, "needs ckpt-5.index"),
        ({"classes": "id,name\n1,a\n2,c\n"}, {}, InvalidArgument, "differ from classes.csv"),
        ({"classes": None}, {"classes": []}, InvalidArgument, "lists no classes"),
    ],
)
def test_a_broken_model_prefix_says_what_is_missing(
    local_storage, tmp_path, layout, overrides, error, says
):
    model_prefix(local_storage, **layout)
    msg = event(**overrides)
    with pytest.raises(error, match=says):
        fetch.fetch_model(
            local_storage, msg, fetch.place_of(msg, default_namespace="default"), tmp_path / "m"
        )


def test_an_unfinished_model_is_refused_and_nothing_is_written(local_storage, tmp_path):
    local_storage.put(PREFIX + "experiment.yaml", b"task: {}\n")  # no manifest
    ctx = FakeContext(local_storage)
    settings = ConverterSettings(convert_work_dir=tmp_path / "work")
    with pytest.raises(FailedPrecondition, match="has no manifest: its training has not finished"):
        asyncio.run(handle_model_trained(event(), ctx, settings=settings))
    assert local_storage.list("default/serving/") == []
    assert list((tmp_path / "work").iterdir()) == []


def test_an_event_without_a_namespace_is_of_the_services():
    msg = event(
        namespace="",
        model=common_pb2.ModelRef(name="m1", version=2),
        model_prefix="team-b/models/m1/2/",
        checkpoint="team-b/models/m1/2/checkpoints/ckpt-5/ckpt-5",
    )
    place = fetch.place_of(msg, default_namespace="team-b")
    assert place.model_prefix == "team-b/models/m1/2/"
    assert place.serving_prefix.startswith("team-b/serving/m1/2")
