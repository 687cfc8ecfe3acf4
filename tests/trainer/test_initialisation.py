"""Where a model's weights come from, checked on the weights themselves (no training step).

The finished model of ``ssd_run`` stands in for a COCO checkpoint kept in
storage (``storage:<key>``); a checkpoint in Model Garden's flat layout
(``backbone/...`` at the root) is restored as well.
"""

from __future__ import annotations

import numpy as np
import pytest

from preannotate import catalog
from preannotate.errors import FailedPrecondition
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


def _first_kernel(layer):
    return next(w for w in layer.weights if "kernel" in w.name)


def _assert_same(layer, other) -> None:
    assert len(layer.weights) == len(other.weights) > 0
    for mine, theirs in zip(layer.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_coco_checkpoint_from_storage_restores_backbone_and_decoder(
    ssd_run, make_session, tmp_path
):
    import tensorflow as tf

    location = "storage:" + ssd_run["outcome"].emits[0].message.checkpoint
    spec = initialisation.choose(
        ssd_run["storage"],
        entry=catalog.get("ssd-mobilenet-v2-coco"),
        catalog=catalog.default_catalog(),
        classes=["rect", "ellipse"],
        base=None,
        coco=location,
        cache_dir=tmp_path,
    )
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


def test_model_gardens_flat_layout_is_restored_too(make_session, tmp_path):
    import tensorflow as tf

    source = make_session()
    path = tf.train.Checkpoint(backbone=source.model.backbone).write(str(tmp_path / "flat"))
    target = make_session()
    target.initialise(InitSpec("coco", path, ("backbone", "decoder"), "flat"))
    np.testing.assert_array_equal(
        _first_kernel(target.model.backbone).numpy(), _first_kernel(source.model.backbone).numpy()
    )


def test_a_checkpoint_without_a_backbone_is_refused(make_session, tmp_path):
    import tensorflow as tf

    session = make_session()
    path = tf.train.Checkpoint(other=tf.Variable(1.0)).write(str(tmp_path / "nothing"))
    with pytest.raises(FailedPrecondition, match="holds no backbone"):
        session.initialise(InitSpec("coco", path, ("backbone", "decoder"), "nothing"))
    with pytest.raises(FailedPrecondition, match="cannot read the coco checkpoint"):
        session.initialise(InitSpec("coco", str(tmp_path / "missing"), ("backbone",), "x"))
