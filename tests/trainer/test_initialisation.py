"""Where a model's weights come from, checked on the weights themselves (no training step).

The finished model of ``ssd_run`` stands in for a COCO checkpoint kept in
storage (``storage:<key>``); a checkpoint in Model Garden's flat layout
(``backbone/...`` at the root) is restored as well. Which checkpoint files are
fetched (every shard, or a refusal) is checked without TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pytest

from preannotate import catalog
from preannotate.arguments import BaseModelRef
from preannotate.errors import FailedPrecondition, NotFound
from preannotate.storage import PrefixWriter
from services.trainer import initialisation
from services.trainer.initialisation import InitSpec


@pytest.fixture(scope="module")
def make_session(ssd_run, tmp_path_factory):
    import tensorflow as tf

    from preannotate.vision import experiment
    from services.trainer.training import Session

    text = ssd_run["storage"].get(ssd_run["prefix"] + "experiment.yaml").decode()

    def make():
        params = experiment.load(text)
        folder = tmp_path_factory.mktemp("session")
        return Session(params, tf.distribute.OneDeviceStrategy("/cpu:0"), folder)

    return make


def _choose(storage, cache_dir, *, base=None, coco=None):
    return initialisation.choose(
        storage,
        entry=catalog.get("ssd-mobilenet-v2-coco"),
        catalog=catalog.default_catalog(),
        classes=["rect", "ellipse"],
        base=base,
        coco=coco,
        cache_dir=cache_dir,
    )


def _first_kernel(layer):
    return next(w for w in layer.weights if "kernel" in w.name)


def _assert_same(layer, other) -> None:
    assert len(layer.weights) == len(other.weights) > 0
    for mine, theirs in zip(layer.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


@pytest.mark.tf
def test_coco_checkpoint_from_storage_restores_backbone_and_decoder(
    ssd_run, make_session, tmp_path
):
    import tensorflow as tf

    location = "storage:" + ssd_run["outcome"].emits[0].message.checkpoint
    spec = _choose(ssd_run["storage"], tmp_path, coco=location)
    assert (spec.kind, spec.modules, spec.source) == ("coco", ("backbone", "decoder"), location)
    assert spec.details() == {"init": "coco", "init_from": location}
    session = make_session()
    before = _first_kernel(session.model.backbone).numpy().copy()
    session.initialise(spec)
    assert not np.array_equal(before, _first_kernel(session.model.backbone).numpy())
    reference = make_session()  # the whole checkpoint, read the plain way
    tf.train.Checkpoint(model=reference.model).read(spec.checkpoint).expect_partial()
    _assert_same(session.model.backbone, reference.model.backbone)
    _assert_same(session.model.decoder, reference.model.decoder)


@pytest.mark.tf
def test_model_gardens_flat_layout_is_restored_too(make_session, tmp_path):
    import tensorflow as tf

    source = make_session()
    path = tf.train.Checkpoint(backbone=source.model.backbone).write(str(tmp_path / "flat"))
    target = make_session()
    target.initialise(InitSpec("coco", path, ("backbone", "decoder"), "flat"))
    np.testing.assert_array_equal(
        _first_kernel(target.model.backbone).numpy(), _first_kernel(source.model.backbone).numpy()
    )


@pytest.mark.tf
def test_a_checkpoint_without_a_backbone_is_refused(make_session, tmp_path):
    import tensorflow as tf

    session = make_session()
    path = tf.train.Checkpoint(other=tf.Variable(1.0)).write(str(tmp_path / "nothing"))
    with pytest.raises(FailedPrecondition, match="holds no backbone"):
        session.initialise(InitSpec("coco", path, ("backbone", "decoder"), "nothing"))
    with pytest.raises(FailedPrecondition, match="cannot read the coco checkpoint"):
        session.initialise(InitSpec("coco", str(tmp_path / "missing"), ("backbone",), "x"))


def _shards(storage, key, *shards):
    storage.put(key + ".index", b"index")
    for shard in shards:
        storage.put(f"{key}.data-{shard}", b"data")


def test_a_checkpoint_missing_a_shard_is_refused_not_half_downloaded(storage, tmp_path):
    """No TensorFlow: the file set is checked by preannotate.layout's strict rule."""
    _shards(storage, "coco/ssd/ckpt-1", "00000-of-00002")
    with pytest.raises(FailedPrecondition, match=r"missing ckpt-1\.data-00001-of-00002"):
        _choose(storage, tmp_path, coco="storage:coco/ssd/ckpt-1")
    assert not (tmp_path / "coco").exists()
    with pytest.raises(NotFound, match="not in storage"):
        _choose(storage, tmp_path, coco="storage:coco/other/ckpt-1")


def _base_model(storage, version, *shards) -> None:
    prefix = f"default/models/old/{version}/"
    key = prefix + "checkpoints/ckpt-4/ckpt-4"
    with PrefixWriter(storage, prefix) as out:
        out.commit(
            {
                "model_type": "ssd-mobilenet-v2-coco",
                "classes": ["rect", "ellipse"],
                "checkpoint": key,
            }
        )
    _shards(storage, key, *shards)


def test_a_base_models_checkpoint_is_downloaded_whole(storage, tmp_path):
    _base_model(storage, 1, "00000-of-00002", "00001-of-00002")
    spec = _choose(storage, tmp_path, base=BaseModelRef("default", "old"))
    assert (spec.kind, spec.source) == ("base", "default/old/1")
    assert sorted(p.name for p in (tmp_path / "base" / "default_old_1").iterdir()) == [
        "ckpt-4.data-00000-of-00002",
        "ckpt-4.data-00001-of-00002",
        "ckpt-4.index",
    ]
    assert spec.checkpoint == str(tmp_path / "base" / "default_old_1" / "ckpt-4")
    _base_model(storage, 2, "00001-of-00002")
    with pytest.raises(FailedPrecondition, match=r"missing ckpt-4\.data-00000-of-00002"):
        _choose(storage, tmp_path, base=BaseModelRef("default", "old"))
