"""Catalog entry + plan -> Model Garden experiment: every key the user sets shows up in it.

No model is built here: these tests compare experiment configs (what the
trainer trains and the converter rebuilds), so they run in seconds.
"""

from __future__ import annotations

import functools

import pytest

from preannotate import catalog
from preannotate.arguments import parse, resolve
from preannotate.vision import experiment
from services.trainer import evaluation
from services.trainer.configs import ExperimentInputs, build_experiment, common

# A value other than the default for every key, per family of keys.
NON_DEFAULT = {
    "epochs": "77",
    "batch_size": "8",
    "initial_learning_rate": "0.0123",
    "num_clones": "2",
    "warmup_steps": "5",
    "checkpoint_every": "11",
    "eval": "false",
    "optimizer": "adam",
    "schedule_step_1": "20",
    "schedule_lr_1": "0.001",
    "first_stage_max_proposals": "77",
    "second_stage_batch_size": "33",
    "num_sampled_masks": "9",
    "stage1_epochs": "4",
    "stage2_epochs": "5",
    "stage3_epochs": "6",
}
# Keys that only make sense together with others: (in both runs, only with the key).
COMPANIONS = {
    "schedule_step_1": ("", "schedule_lr_1=0.001"),
    "schedule_lr_1": ("", "schedule_step_1=20"),
    "schedule_step_2": ("schedule_step_1=20;schedule_lr_1=0.001", "schedule_lr_2=0.0001"),
    "schedule_lr_2": ("schedule_step_1=20;schedule_lr_1=0.001", "schedule_step_2=30"),
}
TRAIN_IMAGES = 40


def _inputs(plan, entry) -> ExperimentInputs:
    return ExperimentInputs(
        num_classes=3,
        train_pattern="/data/train-*.tfrecord",
        val_pattern="/data/val-*.tfrecord",
        annotation_file="/data/val.json" if plan.evaluate else None,
        regenerate_source_id=False,
        eval_batch_size=2 * plan.num_clones,
        val_images=4,
        checkpoint_every=plan.checkpoint_every or 500,
    )


@functools.cache
def _yaml(entry, text: str) -> str:
    plan = resolve(parse(text, entry, machine_gpus=4), entry, TRAIN_IMAGES)
    return experiment.dump(build_experiment(entry, plan, _inputs(plan, entry)))


def _value(entry, key: str) -> str:
    if key == "input_size":
        return str(entry.input_size + 2 * entry.size_multiple)
    if key == "schedule_step_2":
        return "30"
    if key == "schedule_lr_2":
        return "0.0001"
    return NON_DEFAULT[key]


# Keys that change how the model starts, not its experiment (tests/trainer/test_initialisation.py),
# and crop_size and crop_objects, which change the experiment the training steps run
# (their own test below).
NOT_IN_EXPERIMENT = {"pretrained", "crop_size", "crop_objects"}


def _cases():
    for entry in catalog.default_catalog():
        for key in entry.argument_keys():
            if key in NOT_IN_EXPERIMENT:
                continue
            yield pytest.param(entry, key, id=f"{entry.name}:{key}")


@pytest.mark.parametrize(("entry", "key"), list(_cases()))
def test_every_key_changes_the_experiment(entry, key):
    base_text = "epochs=100" if not entry.staged else ""
    if key == "epochs":
        base_text = ""
    both, with_key = COMPANIONS.get(key, ("", ""))
    if key == "num_clones":
        # With 2 clones the default batch of the R-CNNs doubles; keep the batch the same.
        base_text = ";".join(filter(None, [base_text, "batch_size=8"]))
    baseline = _yaml(entry, ";".join(filter(None, [base_text, both])))
    given = f"{key}={_value(entry, key)}"
    changed = _yaml(entry, ";".join(filter(None, [base_text, both, with_key, given])))
    assert changed != baseline, f"{key} left {entry.name}'s experiment unchanged"


def test_what_the_keys_set():
    entry = catalog.get("frcnn-res50-lowp")
    text = (
        "epochs=77;batch_size=8;initial_learning_rate=0.0123;num_clones=2;warmup_steps=5;"
        "input_size=256;checkpoint_every=11;first_stage_max_proposals=50;second_stage_batch_size=33"
    )
    plan = resolve(parse(text, entry, machine_gpus=4), entry, TRAIN_IMAGES)
    params = build_experiment(entry, plan, _inputs(plan, entry))
    task, trainer = params.task, params.trainer
    assert task.train_data.global_batch_size == 8
    assert trainer.train_steps == 77
    assert trainer.optimizer_config.learning_rate.constant.learning_rate == pytest.approx(0.0123)
    assert trainer.optimizer_config.warmup.linear.warmup_steps == 5
    assert trainer.checkpoint_interval == 11
    assert task.model.input_size == [256, 256, 3]
    assert task.model.roi_generator.num_proposals == 50
    assert task.model.roi_sampler.num_sampled_rois == 33
    assert params.runtime.num_gpus == 2 and task.model.norm_activation.use_sync_bn
    assert task.model.num_classes == 3 and task.init_checkpoint is None
    assert task.model.backbone.resnet.model_id == 50


def test_adam_replaces_sgd_and_keeps_the_schedule():
    entry = catalog.get("ssd-mobilenet-v2-coco")
    text = "epochs=50;initial_learning_rate=0.001;schedule_step_1=40;schedule_lr_1=0.0001"
    configs = {}
    for name in ("sgd", "adam"):
        plan = resolve(parse(f"{text};optimizer={name}", entry, machine_gpus=0), entry, 40)
        configs[name] = build_experiment(entry, plan, _inputs(plan, entry)).trainer.optimizer_config
    assert configs["sgd"].optimizer.type == "sgd" and configs["sgd"].optimizer.sgd.momentum == 0.9
    assert configs["adam"].optimizer.type == "adam"
    assert configs["adam"].learning_rate.as_dict() == configs["sgd"].learning_rate.as_dict()
    assert configs["adam"].learning_rate.stepwise.values == [0.001, 0.0001]


def test_lowp_keeps_fewer_proposals_than_frcnn():
    def proposals(name):
        entry = catalog.get(name)
        plan = resolve(parse("", entry, machine_gpus=0), entry, TRAIN_IMAGES)
        return build_experiment(entry, plan, _inputs(plan, entry)).task.model.roi_generator

    assert proposals("frcnn-res50-lowp").num_proposals == 100
    assert proposals("frcnn-res50-coco").num_proposals == 1000


def test_maskrcnn_learning_rate_drops_for_the_last_stage():
    entry = catalog.get("maskrcnn")
    plan = resolve(
        parse(
            "stage1_epochs=1;stage2_epochs=1;stage3_epochs=2;batch_size=2", entry, machine_gpus=2
        ),
        entry,
        10,
    )
    params = build_experiment(entry, plan, _inputs(plan, entry))
    stepwise = params.trainer.optimizer_config.learning_rate.stepwise
    assert list(stepwise.boundaries) == [10]
    assert stepwise.values[1] == pytest.approx(stepwise.values[0] / 10)
    assert params.trainer.train_steps == 20
    assert params.task.model.include_mask


@pytest.mark.parametrize("name", catalog.default_catalog().names())
def test_experiment_yaml_rebuilds_the_same_experiment(name):
    entry = catalog.get(name)
    plan = resolve(parse("", entry, machine_gpus=2), entry, TRAIN_IMAGES)
    params = build_experiment(entry, plan, _inputs(plan, entry))
    text = experiment.dump(params)
    again = experiment.load(text)
    assert experiment.dump(again) == text
    assert type(again.task) is type(params.task)
    backbone = again.task.model.backbone
    expected = {
        "mobilenet_v2": "mobilenet",
        "resnet50": "resnet",
        "resnet101": "resnet",
        "inception_resnet_v2": "inception_resnet_v2",
        "nasnet_large": "nasnet",
    }[entry.backbone]
    assert backbone.type == expected


def test_crops_train_at_the_crop_size_with_frames_scaled_as_at_input_size():
    entry = catalog.get("ssd-mobilenet-v2-coco")
    plan = resolve(parse("input_size=768;crop_size=256", entry, machine_gpus=0), entry, 40)
    params = build_experiment(entry, plan, _inputs(plan, entry))
    view = common.training_view(params, plan)
    assert params.task.model.input_size == [768, 768, 3]  # evaluated and exported at 768
    assert view.task.model.input_size == [256, 256, 3]
    parser, whole = view.task.train_data.parser, params.task.train_data.parser
    # From the whole frame in one crop (1) to the input size's scale with its jitter.
    assert (parser.aug_scale_min, parser.aug_scale_max) == pytest.approx(
        (1.0, 3 * whole.aug_scale_max)
    )
    assert view.task.validation_data == params.task.validation_data
    assert (parser.crop_objects, whole.crop_objects) == (catalog.DEFAULT_CROP_OBJECTS, 0.0)
    given = resolve(
        parse("input_size=768;crop_size=256;crop_objects=0.8", entry, machine_gpus=0), entry, 40
    )
    assert common.training_view(params, given).task.train_data.parser.crop_objects == 0.8
    plain = resolve(parse("input_size=768", entry, machine_gpus=0), entry, 40)
    assert common.training_view(params, plain) is params


@pytest.mark.parametrize(
    ("images", "most", "batch"),
    [(36, 8, 6), (36, 2, 2), (9, 2, 1), (40, 8, 8), (37, 8, 8), (5, 4, 4), (7, 4, 4)],
)
def test_the_evaluation_batch_divides_the_split_when_it_can(images, most, batch):
    # a last, partial batch would make TensorFlow trace the evaluation step a second
    # time; a divisor from half the configured batch up avoids it, none keeps the batch
    assert evaluation.batch_size(images, most) == batch
