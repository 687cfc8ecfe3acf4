"""preannotate.vision: the backbones Model Garden lacks, registered and buildable."""

from __future__ import annotations

import pytest

from preannotate import catalog
from preannotate.arguments import parse, resolve
from preannotate.vision import configs, registry
from services.trainer.configs import ExperimentInputs, build_experiment

#: Trains or builds real TensorFlow models: left out of `make test-fast`.
pytestmark = pytest.mark.tf


def _build_backbone(backbone_config, size: int = 128):
    import tf_keras
    from official.vision.configs import common
    from official.vision.modeling.backbones import factory

    registry.register()
    return factory.build_backbone(
        tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
        backbone_config,
        common.NormActivation(),
        l2_regularizer=tf_keras.regularizers.l2(1e-5),
    )


def test_register_is_idempotent():
    registry.register()
    registry.register()


def test_nasnet_endpoints_at_strides_4_to_32():
    import tensorflow as tf

    backbone = _build_backbone(
        configs.Backbone(type=configs.NASNET, nasnet=configs.NASNet(model_id="mobile"))
    )
    assert {k: tuple(v[1:3]) for k, v in backbone.output_specs.items()} == {
        "2": (32, 32),
        "3": (16, 16),
        "4": (8, 8),
        "5": (4, 4),
    }
    outputs = backbone(tf.zeros([1, 128, 128, 3]))
    assert {k: tuple(v.shape[1:3]) for k, v in outputs.items()}["5"] == (4, 4)
    assert backbone.losses  # the L2 of its kernels


def test_inception_resnet_v2_faster_rcnn_builds_from_the_catalog_entry():
    """The endpoints are resized to exact strides, so FPN fits them (it fails otherwise)."""
    from official.core import task_factory

    entry = catalog.get("frcnn-inc-resv2-atr-coco")
    plan = resolve(
        parse("input_size=128;first_stage_max_proposals=16", entry, machine_gpus=0), entry, 4
    )
    params = build_experiment(
        entry,
        plan,
        ExperimentInputs(3, "/t/train-*", "/t/val-*", None, False, 2, 1, 10),
    )
    assert params.task.model.backbone.type == configs.INCEPTION_RESNET_V2
    model = task_factory.get_task(params.task).build_model()  # runs a forward pass
    specs = model.backbone.output_specs
    assert {k: tuple(v[1:3]) for k, v in specs.items()} == {
        "2": (32, 32),
        "3": (16, 16),
        "4": (8, 8),
        "5": (4, 4),
    }
    assert model.count_params() > 50_000_000


def test_unknown_nasnet_size_is_refused():
    with pytest.raises(ValueError, match="model_id 'huge'"):
        _build_backbone(
            configs.Backbone(type=configs.NASNET, nasnet=configs.NASNet(model_id="huge"))
        )
