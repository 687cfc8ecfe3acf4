"""The model registry: from model.converted events and from serving manifests in storage."""

from __future__ import annotations

import json

import pytest

from preannotate import keys
from preannotate.errors import InvalidArgument, NotFound, UnsafeName
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, events_pb2
from services.inference.registry import ModelRegistry, entry_from_event


def _write_version(storage, ns, name, version, manifest=None, classes_csv=None):
    prefix = keys.serving_prefix(ns, name, version)
    storage.put(prefix + "saved_model.pb", b"pb")
    if classes_csv is not None:
        storage.put(prefix + "assets/classes.csv", classes_csv.encode())
    if manifest is not None:
        storage.put(prefix + "manifest.json", json.dumps(manifest).encode())


def _event(**kw) -> events_pb2.ModelConverted:
    base = {
        "job_id": "j1",
        "namespace": "team-a",
        "model": common_pb2.ModelRef(namespace="team-a", name="cars", version=3),
        "serving_path": "team-a/serving/cars/3/",
        "classes": ["car", "truck"],
        "has_masks": False,
    }
    base.update(kw)
    return events_pb2.ModelConverted(**base)


async def test_registry_fills_from_manifests_and_answers_latest(tmp_path):
    storage = LocalStorage(tmp_path)
    _write_version(storage, "team-a", "cars", 1, {"classes": ["car"], "model_type": "x"})
    _write_version(storage, "team-a", "cars", 3, {"classes": ["car", "truck"]})
    _write_version(
        storage, "team-b", "cells", 2, {}, classes_csv="id,name\n1,nucleus\n2,membrane\n"
    )
    _write_version(storage, "team-a", "cars", 4)  # no manifest: unfinished, ignored
    storage.put("team-a/models/cars/1/manifest.json", b"{}")  # not a serving manifest

    registry = ModelRegistry(storage)
    assert await registry.refresh() == 3
    assert [e.label for e in registry.entries()] == [
        "team-a/cars/1",
        "team-a/cars/3",
        "team-b/cells/2",
    ]
    latest = await registry.resolve("team-a", "cars")
    assert latest.version == 3 and latest.classes == ("car", "truck")
    assert (await registry.resolve("team-b", "cells")).classes == ("nucleus", "membrane")
    assert (await registry.resolve("team-a", "cars", 1)).model_type == "x"
    assert {e.label for e in registry.latest()} == {"team-a/cars/3", "team-b/cells/2"}


async def test_failed_lookup_rescans_storage_then_names_what_exists(tmp_path):
    storage = LocalStorage(tmp_path)
    registry = ModelRegistry(storage)
    await registry.refresh()
    # Another replica took the event: the model is only in storage.
    _write_version(storage, "default", "late", 1, {"classes": ["a"]})
    assert (await registry.resolve("default", "late")).version == 1

    with pytest.raises(NotFound) as err:
        await registry.resolve("default", "late", 7)
    assert "default/late/1" in str(err.value)
    with pytest.raises(NotFound, match="none"):
        await registry.resolve("other", "late")
    with pytest.raises(UnsafeName):
        await registry.resolve("default", "../etc")


async def test_unusable_manifests_are_reported_not_served(tmp_path):
    storage = LocalStorage(tmp_path)
    _write_version(storage, "default", "broken", 1, {"model_type": "x"})
    _write_version(storage, "default", "odd", 1, {"classes": ["a"], "metrics": {"AP": "high"}})
    _write_version(storage, "default", "good", 1, {"classes": ["a"]})
    storage.put("default/serving/notjson/1/manifest.json", b"{")
    registry = ModelRegistry(storage)
    assert await registry.refresh() == 1
    assert "no classes" in registry.broken["default/serving/broken/1/manifest.json"]
    assert "not usable" in registry.broken["default/serving/odd/1/manifest.json"]
    assert "not JSON" in registry.broken["default/serving/notjson/1/manifest.json"]


async def test_the_converters_manifest_keys(tmp_path):
    storage = LocalStorage(tmp_path)
    manifest = {
        "classes": ["car"],
        "input_size": [256, 320],
        "signature_names": ["serving_default", "serving_image_tensor"],
        "signatures": {"serving_default": {"inputs": {}}},
        "boxes": "normalised [ymin, xmin, ymax, xmax] of the image as sent",
        "metrics": {"AP": 0.4},
        "has_masks": True,
        "job_id": "j9",
    }
    _write_version(storage, "default", "m", 2, manifest)
    registry = ModelRegistry(storage)
    await registry.refresh()
    entry = await registry.resolve("default", "m")
    assert entry.input_size == 320 and entry.has_masks and entry.boxes_normalized is True
    assert entry.signatures == ("serving_default", "serving_image_tensor")
    assert entry.metrics == {"AP": 0.4} and entry.job_id == "j9"


def test_entry_from_event_and_its_checks():
    entry = entry_from_event(_event(), default_namespace="default")
    assert entry.key == ("team-a", "cars", 3)
    assert entry.class_name(2) == "truck" and entry.class_name(9) == "class-9"
    assert entry.to_proto().serving_path == "team-a/serving/cars/3/"

    with pytest.raises(InvalidArgument, match="serving_path"):
        entry_from_event(
            _event(serving_path="team-a/serving/other/3/"), default_namespace="default"
        )
    with pytest.raises(InvalidArgument, match="no classes"):
        entry_from_event(_event(classes=[]), default_namespace="default")
    with pytest.raises(UnsafeName):
        entry_from_event(
            _event(model=common_pb2.ModelRef(name="Bad Name", version=1)),
            default_namespace="default",
        )
    with pytest.raises(UnsafeName):
        entry_from_event(
            _event(model=common_pb2.ModelRef(name="cars", version=0)), default_namespace="default"
        )


def test_registry_keeps_the_first_entry_of_a_version():
    registry = ModelRegistry()
    first = entry_from_event(_event(), default_namespace="default")
    assert registry.add(first)
    assert not registry.add(
        entry_from_event(_event(classes=["other"]), default_namespace="default")
    )
    assert registry.get("team-a", "cars").classes == ("car", "truck")


async def test_classes_csv_assets_are_read_with_the_one_parser(tmp_path):
    """preannotate.classes reads the asset: the seed's "labels" header is not a class,
    and id 0 (the background) is refused rather than taken as class 1."""
    storage = LocalStorage(tmp_path)
    _write_version(storage, "default", "seed", 1, {}, classes_csv="labels\ncat\ndog\n")
    _write_version(storage, "default", "bom", 1, {}, classes_csv="\ufeffname\ncat\n")
    _write_version(storage, "default", "zero", 1, {}, classes_csv="0,background\n1,cat\n")
    registry = ModelRegistry(storage)
    assert await registry.refresh() == 2
    assert (await registry.resolve("default", "seed")).classes == ("cat", "dog")
    assert (await registry.resolve("default", "bom")).classes == ("cat",)
    assert "never listed" in registry.broken["default/serving/zero/1/manifest.json"]


def test_an_event_without_a_namespace_is_of_the_services():
    msg = _event(
        namespace="",
        model=common_pb2.ModelRef(name="cars", version=3),
        serving_path="team-b/serving/cars/3/",
    )
    assert entry_from_event(msg, default_namespace="team-b").key == ("team-b", "cars", 3)
