"""Which layers train in each Mask R-CNN stage, on Model Garden's ResNet-50 backbone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.trainer import stages

#: Trains or builds real TensorFlow models: left out of `make test-fast`.
pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def model():
    import tf_keras
    from official.vision.configs import backbones, common
    from official.vision.modeling.backbones import factory

    backbone = factory.build_backbone(
        tf_keras.layers.InputSpec(shape=[None, 128, 128, 3]),
        backbones.Backbone(type="resnet", resnet=backbones.ResNet(model_id=50)),
        common.NormActivation(),
    )
    return SimpleNamespace(backbone=backbone)


def _trainable_groups(model) -> set[str]:
    """Which ResNet stages own the trainable variables ('stem', 'l2'..'l5')."""
    group, owner = "l2", {}
    for layer in model.backbone.layers:
        owner[layer.name] = (
            group if "bottleneck" in layer.name or "block_group" in layer.name else "stem"
        )
        if layer.name.startswith("block_group_l"):
            owner[layer.name] = layer.name[-2:]
            group = f"l{int(layer.name[-1]) + 1}"
    groups = set()
    for layer in model.backbone.layers:
        if layer.trainable_weights:
            name = layer.name
            groups.add(owner[name] if owner[name] == "stem" else _group_of(model, name))
    return groups


def _group_of(model, name: str) -> str:
    names = [layer.name for layer in model.backbone.layers]
    after = names[names.index(name) :]
    return next(n for n in after if n.startswith("block_group_l"))[-2:]


def test_heads_stage_freezes_the_backbone(model):
    stages.set_stage(model, "heads")
    assert model.backbone.trainable_weights == []


def test_stage_two_trains_resnet_stage_4_and_up(model):
    stages.set_stage(model, "stage4+")
    assert _trainable_groups(model) == {"l4", "l5"}


def test_stage_three_trains_everything(model):
    stages.set_stage(model, "all")
    assert _trainable_groups(model) == {"stem", "l2", "l3", "l4", "l5"}
    assert len(model.backbone.trainable_weights) == len(
        [w for w in model.backbone.weights if "moving_" not in w.name]
    )


def test_stage_at():
    bounds = [(1, 2, "heads"), (2, 2, "stage4+"), (3, 5, "all")]  # stage 2 has no steps
    assert [stages.stage_at(step, bounds) for step in range(5)] == [
        (1, "heads"),
        (1, "heads"),
        (3, "all"),
        (3, "all"),
        (3, "all"),
    ]
