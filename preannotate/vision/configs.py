"""Model Garden config classes that can also hold the backbones Model Garden lacks.

``backbones.Backbone`` is a one-of config: a new backbone type needs a field of
its own, so ``Backbone`` here adds ``inception_resnet_v2`` and ``nasnet``, and
the model and task configs are re-typed to hold it. Each task config keeps the
Model Garden task class (registered in ``registry.register()``), and each is a
subclass of the stock config, so Model Garden's export modules accept them.
"""

from __future__ import annotations

import dataclasses

from official.modeling import hyperparams
from official.vision.configs import backbones
from official.vision.configs import maskrcnn as maskrcnn_cfg
from official.vision.configs import retinanet as retinanet_cfg

INCEPTION_RESNET_V2 = "inception_resnet_v2"
NASNET = "nasnet"


@dataclasses.dataclass
class InceptionResNetV2(hyperparams.Config):
    """Keras Applications' Inception-ResNet-v2; endpoints at strides 4, 8, 16, 32."""

    #: Resize each endpoint to ceil(input / stride): its valid padding loses pixels.
    resize_endpoints: bool = True


@dataclasses.dataclass
class NASNet(hyperparams.Config):
    """Keras Applications' NASNet-A; ``model_id`` is "large" or "mobile"."""

    model_id: str = "large"


@dataclasses.dataclass
class Backbone(backbones.Backbone):
    """Model Garden's backbones plus ``inception_resnet_v2`` and ``nasnet``."""

    inception_resnet_v2: InceptionResNetV2 = dataclasses.field(default_factory=InceptionResNetV2)
    nasnet: NASNet = dataclasses.field(default_factory=NASNet)


def _resnet_backbone() -> Backbone:
    return Backbone(type="resnet", resnet=backbones.ResNet())


@dataclasses.dataclass
class RetinaNet(retinanet_cfg.RetinaNet):
    backbone: Backbone = dataclasses.field(default_factory=_resnet_backbone)


@dataclasses.dataclass
class RetinaNetParser(retinanet_cfg.Parser):
    """Model Garden's parser settings plus where training crops fall (``crops.py``)."""

    #: Share of training crops centred near one of the frame's objects; the rest fall
    #: anywhere in the scaled frame, as Model Garden cuts them.
    crop_objects: float = 0.0


@dataclasses.dataclass
class RetinaNetData(retinanet_cfg.DataConfig):
    parser: RetinaNetParser = dataclasses.field(default_factory=RetinaNetParser)


@dataclasses.dataclass
class RetinaNetTask(retinanet_cfg.RetinaNetTask):
    model: RetinaNet = dataclasses.field(default_factory=RetinaNet)
    train_data: RetinaNetData = dataclasses.field(
        default_factory=lambda: RetinaNetData(is_training=True)
    )
    validation_data: RetinaNetData = dataclasses.field(
        default_factory=lambda: RetinaNetData(is_training=False)
    )


@dataclasses.dataclass
class MaskRCNN(maskrcnn_cfg.MaskRCNN):
    backbone: Backbone = dataclasses.field(default_factory=_resnet_backbone)


@dataclasses.dataclass
class MaskRCNNTask(maskrcnn_cfg.MaskRCNNTask):
    model: MaskRCNN = dataclasses.field(default_factory=MaskRCNN)


#: Family name (as in preannotate.catalog) -> task config class.
TASK_CONFIGS: dict[str, type] = {
    "retinanet": RetinaNetTask,
    "fasterrcnn": MaskRCNNTask,
    "maskrcnn": MaskRCNNTask,
}
