"""Where a model's weights come from, checked on the weights themselves (no training step).

The default start reads the weights store (``preannotate.weights``): a real
checkpoint made here goes in through the store's offline import, or, for
what no published source covers (a whole detector: ``ssd_run``'s model), in
the store's layout. Mirrors are local URLs nothing listens on, so "missing and
not fetchable" is real. Keras .h5 weights are loaded into a real backbone.
Which checkpoint files are fetched (every shard, or a refusal) is checked
without TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from preannotate import catalog
from preannotate.arguments import BaseModelRef
from preannotate.errors import FailedPrecondition
from preannotate.storage import PrefixWriter
from preannotate.weights import WeightsStore
from services.trainer import initialisation
from services.trainer.initialisation import InitSpec

SSD = "ssd-mobilenet-v2-coco"


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


def _choose(storage, cache_dir, *, base=None, pretrained=True, weights=None, classes=None):
    return initialisation.choose(
        storage,
        entry=catalog.get(SSD),
        catalog=catalog.default_catalog(),
        classes=list(classes or ["rect", "ellipse"]),
        base=base,
        pretrained=pretrained,
        weights=weights,
        cache_dir=cache_dir,
    )


def _install(storage, checkpoint_key: str, *, covers: str, dataset: str) -> None:
    """Weights in the store's layout (``weights/<model-type>/manifest.json`` last) for
    what no published source covers: a whole detector. ``checkpoint_key`` is copied."""
    folder = f"weights/{SSD}/0123456789ab/"
    stem = checkpoint_key.rpartition("/")[2]
    for key in storage.list(checkpoint_key.rpartition("/")[0] + "/"):
        name = key.rpartition("/")[2]
        if name.startswith(stem + "."):
            storage.put(folder + name, storage.get(key))
    storage.put(
        f"weights/{SSD}/manifest.json",
        json.dumps(
            {
                "model_type": SSD,
                "sha256": "0123456789ab" + "0" * 52,
                "url": "https://example.org/detector.tar.gz",
                "format": "tf-checkpoint",
                "covers": covers,
                "dataset": dataset,
                "key": folder + stem,
            }
        ).encode(),
    )


def _first_kernel(layer):
    return next(w for w in layer.weights if "kernel" in w.name)


def _assert_same(layer, other) -> None:
    assert len(layer.weights) == len(other.weights) > 0
    for mine, theirs in zip(layer.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


@pytest.mark.tf
def test_default_start_restores_the_installed_backbone_and_only_it(make_session, storage, tmp_path):
    """The published weights of ssd-mobilenet-v2-coco are an ImageNet backbone in Model
    Garden's flat layout (``backbone/...``); one made here goes in through the store's
    offline import, and the default start restores exactly it."""
    import tensorflow as tf

    source = make_session()
    path = tf.train.Checkpoint(backbone=source.model.backbone).write(str(tmp_path / "ckpt-7"))
    installed = WeightsStore(storage).import_file(SSD, Path(path + ".index"))
    assert (installed.covers, installed.dataset) == ("backbone", "imagenet")

    spec = _choose(storage, tmp_path / "cache", weights=WeightsStore(storage))
    assert (spec.kind, spec.modules, spec.format) == (
        "imagenet-backbone",
        ("backbone",),
        "tf-checkpoint",
    )
    assert spec.details() == {
        "init": "imagenet-backbone",
        "init_from": "import:ckpt-7.index",
        "init_note": "backbone restored; decoder and heads start fresh",
    }
    session = make_session()
    session.initialise(spec)
    _assert_same(session.model.backbone, source.model.backbone)  # every variable, BN stats too
    assert not np.array_equal(  # the decoder starts fresh
        _first_kernel(session.model.decoder).numpy(), _first_kernel(source.model.decoder).numpy()
    )


@pytest.mark.tf
def test_detector_weights_of_other_classes_restore_all_but_the_class_heads(
    ssd_run, make_session, tmp_path
):
    """A whole detector (ssd_run's model, classes rect and ellipse) as installed weights,
    for a job of other classes: backbone and decoder restored, the heads start fresh."""
    import tensorflow as tf

    storage = ssd_run["storage"]
    _install(
        storage, ssd_run["outcome"].emits[0].message.checkpoint, covers="detector", dataset="coco"
    )
    try:
        spec = _choose(storage, tmp_path, weights=WeightsStore(storage), classes=["duck", "goose"])
    finally:
        storage.delete_prefix(f"weights/{SSD}/")
    assert (spec.kind, spec.modules) == ("coco", ("backbone", "decoder"))
    assert spec.details() == {
        "init": "coco",
        "init_from": "https://example.org/detector.tar.gz",
        "init_note": "backbone and decoder restored; the class heads start fresh",
    }
    session = make_session()
    before = _first_kernel(session.model.backbone).numpy().copy()
    session.initialise(spec)
    assert not np.array_equal(before, _first_kernel(session.model.backbone).numpy())
    reference = make_session()  # the whole checkpoint, read the plain way
    tf.train.Checkpoint(model=reference.model).read(spec.checkpoint).expect_partial()
    _assert_same(session.model.backbone, reference.model.backbone)
    _assert_same(session.model.decoder, reference.model.decoder)
    assert not np.array_equal(
        _first_kernel(session.model.head).numpy(), _first_kernel(reference.model.head).numpy()
    )


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


def test_installed_weights_missing_a_shard_are_not_used(storage, tmp_path, unreachable_mirror):
    """No TensorFlow: an install whose checkpoint lost a shard is not an install, so the
    store fetches; unreachable, the job fails with the way out, and nothing is stored."""
    folder = f"weights/{SSD}/0123456789ab/"
    _shards(storage, folder + "ckpt-1", "00000-of-00002")
    _install(storage, folder + "ckpt-1", covers="backbone", dataset="imagenet")
    store = WeightsStore(storage, mirror=unreachable_mirror, timeout=5)
    assert store.installed(SSD) is None
    with pytest.raises(FailedPrecondition, match=f"preannotate weights pull {SSD}"):
        _choose(storage, tmp_path, weights=store)
    assert not (tmp_path / "weights").exists()


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


def test_missing_weights_and_an_unreachable_mirror_fail_with_the_way_out(
    storage, tmp_path, unreachable_mirror
):
    """No silent fall back to random: the store's message, with pull and import."""
    mirror = unreachable_mirror
    with pytest.raises(FailedPrecondition) as err:
        _choose(storage, tmp_path, weights=WeightsStore(storage, mirror=mirror, timeout=5))
    message = str(err.value)
    for words in (
        f"pretrained weights for {SSD} from {mirror}/ckpt-180648.index",
        f"`preannotate weights pull {SSD}`",
        "PREANNOTATE_WEIGHTS_MIRROR",
        f"`preannotate weights import {SSD} FILE`",
        "add pretrained=false",
    ):
        assert words in message
    assert storage.list("weights/") == [] and not (tmp_path / "weights").exists()


def test_pretrained_false_starts_random_and_never_asks_the_store(
    storage, tmp_path, unreachable_mirror
):
    store = WeightsStore(storage, mirror=unreachable_mirror, timeout=5)
    spec = _choose(storage, tmp_path / "cache", pretrained=False, weights=store)
    assert spec == InitSpec("random")
    assert spec.details() == {"init": "random"}
    assert storage.list("weights/") == [] and not (tmp_path / "cache").exists()


def test_a_base_model_wins_over_the_default_start(storage, tmp_path, unreachable_mirror):
    """Pretrained (the default) and no weights reachable: the base model is the start."""
    _base_model(storage, 1, "00000-of-00001")
    store = WeightsStore(storage, mirror=unreachable_mirror, timeout=5)
    same = _choose(storage, tmp_path, base=BaseModelRef("default", "old"), weights=store)
    assert (same.kind, same.modules, same.label) == ("base", ("all",), "base default/old/1")
    assert same.details() == {"init": "base default/old/1"}
    other = _choose(
        storage, tmp_path, base=BaseModelRef("default", "old"), weights=store, classes=["duck"]
    )
    assert other.modules == ("backbone", "decoder")
    assert other.details() == {
        "init": "base default/old/1",
        "init_note": "backbone and decoder restored; the class heads start fresh",
    }
    assert storage.list("weights/") == []


def test_a_resumed_job_shows_the_start_it_recorded():
    spec = InitSpec("imagenet-backbone", "/tmp/x", ("backbone",), "https://w/ckpt.index")
    again = InitSpec.from_record(json.loads(json.dumps(spec.record())))
    assert again.details() == spec.details() and again.checkpoint is None
    older = InitSpec.from_record(
        {"kind": "base-backbone", "modules": ["backbone", "decoder"], "source": "team/old/2"}
    )
    assert older.details()["init"] == "base team/old/2" and "init_note" in older.details()


@pytest.mark.tf
def test_keras_h5_imagenet_weights_are_loaded_into_the_backbone(tmp_path):
    """Keras Applications' notop file into the Inception-ResNet-v2 backbone, whose layer
    names (conv2d_N, auto-numbered) differ from the file's once another model was built:
    every backbone variable equals the file's after the load."""
    import tf_keras
    from official.vision.configs import common
    from official.vision.modeling.backbones import factory

    from preannotate.vision import configs, registry
    from services.trainer.training import load_keras_h5

    registry.register()
    size = 96
    published = tf_keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    path = str(tmp_path / "inception_resnet_v2_notop.h5")
    published.save_weights(path)
    backbone = factory.build_backbone(
        tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
        configs.Backbone(type=configs.INCEPTION_RESNET_V2),
        common.NormActivation(),
    )
    assert backbone.layers[1].name != published.layers[1].name  # by name would not match
    assert not np.array_equal(backbone.weights[0].numpy(), published.weights[0].numpy())
    load_keras_h5(backbone, path, "the imagenet-backbone weights")
    assert len(backbone.weights) == len(published.weights) > 800
    for mine, theirs in zip(backbone.weights, published.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    other = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    other.save_weights(str(tmp_path / "other.h5"))
    with pytest.raises(FailedPrecondition, match="do not fit the backbone of this model"):
        load_keras_h5(backbone, str(tmp_path / "other.h5"), "the imagenet-backbone weights")
