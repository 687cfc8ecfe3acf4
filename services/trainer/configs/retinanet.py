"""ssd-mobilenet-v2-coco: Model Garden's retinanet_mobile_coco with a MobileNetV2 backbone.

Model Garden has no SSD; the closest single-stage detector is its RetinaNet
recipe for MobileNetV2: a separable FPN and a separable head of 128 filters,
relu6, levels 3 to 7.
"""

from __future__ import annotations

from official.vision.configs import decoders
from official.vision.configs import retinanet as retinanet_cfg

from preannotate.arguments import Plan
from preannotate.catalog import ModelEntry
from preannotate.vision import experiment
from services.trainer.configs import ExperimentInputs, common


def build(entry: ModelEntry, plan: Plan, inputs: ExperimentInputs):
    params = experiment.base(entry.experiment)
    model = params.task.model
    model.min_level = 3
    model.max_level = 7
    model.decoder = decoders.Decoder(
        type="fpn", fpn=decoders.FPN(num_filters=128, use_separable_conv=True)
    )
    model.head = retinanet_cfg.RetinaNetHead(num_filters=128, use_separable_conv=True)
    model.anchor = retinanet_cfg.Anchor(num_scales=3, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=3)
    model.norm_activation.activation = "relu6"
    model.norm_activation.norm_momentum = 0.99
    model.norm_activation.norm_epsilon = 0.001
    params.task.losses.l2_weight_decay = 3e-5
    return common.apply(params, entry, plan, inputs)
