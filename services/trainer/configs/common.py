"""What every family's builder shares: backbones, data, runtime, optimizer.

The overrides that make Model Garden's TPU recipes train here: no gs://
init checkpoint (the trainer restores its own), float32, no XLA, batch sizes
from the plan, sync BatchNorm only across several replicas, the learning rate
schedule of the plan (linear warm-up from 0, then constant, stepwise or by
Mask R-CNN stage).
"""

from __future__ import annotations

import math

from official.modeling import optimization
from official.vision.configs import backbones

from preannotate.arguments import Plan
from preannotate.catalog import ModelEntry
from preannotate.vision import configs as vision_configs
from services.trainer.configs import ExperimentInputs


def backbone(name: str) -> vision_configs.Backbone:
    """The backbone config of a catalog backbone id."""
    if name == "mobilenet_v2":
        return vision_configs.Backbone(
            type="mobilenet", mobilenet=backbones.MobileNet(model_id="MobileNetV2")
        )
    if name in ("resnet50", "resnet101"):
        return vision_configs.Backbone(
            type="resnet", resnet=backbones.ResNet(model_id=int(name[len("resnet") :]))
        )
    if name == "inception_resnet_v2":
        return vision_configs.Backbone(type=vision_configs.INCEPTION_RESNET_V2)
    if name in ("nasnet_large", "nasnet_mobile"):
        return vision_configs.Backbone(
            type=vision_configs.NASNET,
            nasnet=vision_configs.NASNet(model_id=name[len("nasnet_") :]),
        )
    raise ValueError(f"no backbone config for catalog backbone {name!r}")


def optimizer(plan: Plan) -> optimization.OptimizationConfig:
    """SGD with momentum (or Adam, Model Garden's defaults) and the plan's learning rate schedule."""
    lr = plan.learning_rate
    if plan.stages:
        boundary = sum(s.steps for s in plan.stages[:-1])
        last = lr * plan.stages[-1].lr_factor
        if plan.stages[-1].steps == 0:
            schedule = {"type": "constant", "constant": {"learning_rate": lr}}
        elif boundary == 0:
            schedule = {"type": "constant", "constant": {"learning_rate": last}}
        else:
            schedule = {
                "type": "stepwise",
                "stepwise": {"boundaries": [boundary], "values": [lr, last]},
            }
    elif plan.schedule:
        schedule = {
            "type": "stepwise",
            "stepwise": {
                "boundaries": [step for step, _ in plan.schedule],
                "values": [lr, *(value for _, value in plan.schedule)],
            },
        }
    else:
        schedule = {"type": "constant", "constant": {"learning_rate": lr}}
    kind = plan.optimizer
    config = {
        "optimizer": {"type": kind, kind: {"momentum": 0.9} if kind == "sgd" else {}},
        "learning_rate": schedule,
    }
    if plan.warmup_steps > 0:
        config["warmup"] = {
            "type": "linear",
            "linear": {"warmup_steps": plan.warmup_steps, "warmup_learning_rate": 0.0},
        }
    return optimization.OptimizationConfig(config)


def apply(params, entry: ModelEntry, plan: Plan, inputs: ExperimentInputs):
    """Set what every family shares on ``params`` (a re-typed base experiment)."""
    task = params.task
    task.init_checkpoint = None
    task.init_checkpoint_modules = "all"
    task.annotation_file = inputs.annotation_file
    task.use_coco_metrics = True
    model = task.model
    model.num_classes = inputs.num_classes
    model.input_size = [plan.input_size, plan.input_size, 3]
    model.backbone = backbone(entry.backbone)
    model.norm_activation.use_sync_bn = plan.num_clones > 1

    train = task.train_data
    train.input_path = inputs.train_pattern
    train.global_batch_size = plan.batch_size
    train.is_training = True
    train.dtype = "float32"
    train.shuffle_buffer_size = max(8, min(1000, plan.train_images or 1000))
    train.decoder.simple_decoder.regenerate_source_id = inputs.regenerate_source_id
    train.parser.aug_rand_hflip = True
    train.parser.aug_scale_min = 0.8
    train.parser.aug_scale_max = 1.25

    val = task.validation_data
    val.input_path = inputs.val_pattern
    val.global_batch_size = inputs.eval_batch_size
    val.is_training = False
    val.dtype = "float32"
    val.drop_remainder = False
    val.decoder.simple_decoder.regenerate_source_id = inputs.regenerate_source_id

    params.runtime.mixed_precision_dtype = "float32"
    params.runtime.enable_xla = False
    params.runtime.distribution_strategy = "mirrored"
    params.runtime.num_gpus = plan.num_clones

    trainer = params.trainer
    trainer.train_steps = plan.steps
    trainer.steps_per_loop = 1
    trainer.summary_interval = 1
    trainer.checkpoint_interval = inputs.checkpoint_every
    trainer.validation_interval = plan.steps
    trainer.validation_steps = max(1, math.ceil(inputs.val_images / inputs.eval_batch_size))
    trainer.optimizer_config = optimizer(plan)
    return params


def training_view(params, plan: Plan):
    """The experiment the training steps run: ``params`` itself, or its crop view.

    With ``crop_size``, Model Garden's parser scales each frame so that its long side is
    crop_size x a random factor, then cuts a crop_size window from it
    (``preprocess_ops.resize_and_crop_image``). The factor runs from 1 (the whole frame
    in one crop) to 1.25 x input_size / crop_size (the scale at which the model sees
    frames at input_size, where it is evaluated and exported, with the usual jitter):
    steps cost as at crop_size, small objects keep their size, large ones are seen
    whole too (with the input's scale only, their AP fell from 0.36 to 0.10 on
    bench/datasets/mixed.py; docs/benchmarks.md). ``plan.crop_objects`` of the crops
    are centred near an object (``preannotate.vision.crops``).
    """
    if not plan.crop_size:
        return params
    from preannotate.vision import experiment

    view = experiment.editable_copy(params)
    ratio = plan.input_size / plan.crop_size
    view.task.model.input_size = [plan.crop_size, plan.crop_size, 3]
    parser = view.task.train_data.parser
    parser.aug_scale_min = 1.0
    parser.aug_scale_max = parser.aug_scale_max * ratio
    parser.crop_objects = plan.crop_objects  # crop_size is a RetinaNet argument only
    view.lock()
    return view


def rcnn(params, plan: Plan):
    """The R-CNN proposal and sampling settings of the plan."""
    model = params.task.model
    proposals = plan.first_stage_max_proposals
    model.roi_generator.num_proposals = proposals
    model.roi_generator.test_num_proposals = proposals
    model.roi_generator.pre_nms_top_k = max(proposals, min(2000, 2 * proposals))
    model.roi_generator.test_pre_nms_top_k = max(proposals, min(1000, 2 * proposals))
    model.roi_sampler.num_sampled_rois = plan.second_stage_batch_size
    return params
