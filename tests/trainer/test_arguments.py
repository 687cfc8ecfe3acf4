"""The seed's argument string: parsed, typed, refused with messages that say what to change."""

from __future__ import annotations

import dataclasses

import pytest

from preannotate import arguments
from preannotate.arguments import parse, resolve
from preannotate.errors import InvalidArgument
from preannotate.v1 import common_pb2

SSD = "ssd-mobilenet-v2-coco"
FRCNN = "frcnn-res50-coco"


def test_the_seed_syntax_with_spaces_and_a_trailing_semicolon():
    args = parse(" epochs=100 ;  batch_size = 24; ", SSD, machine_gpus=0)
    assert args.epochs == 100 and args.batch_size == 24
    assert args.given == {"epochs", "batch_size"}
    assert args.num_clones == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.epochs = 5  # type: ignore[misc]


def test_maskrcnn_stage_keys_with_dashes():
    args = parse(
        "--stage1_epochs=1;--stage2_epochs=2;--stage3_epochs=3", "maskrcnn", machine_gpus=1
    )
    assert (args.stage1_epochs, args.stage2_epochs, args.stage3_epochs) == (1, 2, 3)


def test_seed_aliases_and_legacy_dashes():
    args = parse("num-steps=50;learning_rate=0.01;num-clones=2", FRCNN, machine_gpus=2)
    assert args.epochs == 50 and args.initial_learning_rate == 0.01 and args.num_clones == 2


def test_empty_string_takes_every_default():
    args = parse("", SSD, machine_gpus=0)
    assert args.given == frozenset()
    plan = resolve(args, SSD, 100)
    assert (plan.steps, plan.steps_source, plan.batch_size, plan.learning_rate) == (
        15000,
        "default",
        24,
        0.004,
    )


@pytest.mark.parametrize(
    ("text", "model", "gpus", "words"),
    [
        ("foo=1", SSD, 0, ["unknown argument 'foo'", "allowed: epochs, batch_size"]),
        ("epochs=1;num_steps=2", SSD, 0, ["epochs is given twice", "keep one"]),
        ("epochs=1;epochs=1", SSD, 0, ["given twice"]),
        ("epochs=ten", SSD, 0, ["epochs='ten'", "whole number", "or auto"]),
        ("epochs=0", SSD, 0, ["epochs=0 is out of range", "from 1 to"]),
        ("batch_size=1.5", SSD, 0, ["batch_size='1.5'", "whole number"]),
        ("initial_learning_rate=fast", SSD, 0, ["initial_learning_rate='fast'", "number"]),
        ("initial_learning_rate=inf", SSD, 0, ["not a number"]),
        ("initial_learning_rate=-1", SSD, 0, ["out of range"]),
        ("eval=maybe", SSD, 0, ["eval='maybe'", "true or false"]),
        ("optimizer=rmsprop", SSD, 0, ["optimizer='rmsprop'", "not one of sgd, adam"]),
        ("epochs", SSD, 0, ["'epochs' has no value", "key=value"]),
        ("epochs=", SSD, 0, ["empty value"]),
        ("num_clones=2", SSD, 0, ["num_clones=2", "CPU machine type", "num_clones=1 at most"]),
        ("num_clones=8", FRCNN, 4, ["num_clones=8", "4 GPUs", "num_clones=4 at most"]),
        ("batch_size=3;num_clones=2", FRCNN, 2, ["batch_size=3", "multiple of 2"]),
        ("input_size=300", SSD, 0, ["input_size=300", "multiple of 128", "256 or 384"]),
        ("epochs=10", "maskrcnn", 1, ["maskrcnn trains in stages", "--stage1_epochs"]),
        ("stage1_epochs=1", SSD, 0, ["stage1_epochs is only for maskrcnn"]),
        ("num_sampled_masks=8", FRCNN, 0, ["unknown argument 'num_sampled_masks'"]),
        ("stage1_epochs=0;stage2_epochs=0;stage3_epochs=0", "maskrcnn", 1, ["every stage has 0"]),
        ("schedule_step_1=100", FRCNN, 0, ["add schedule_lr_1"]),
        ("schedule_step_2=100;schedule_lr_2=0.1", FRCNN, 0, ["needs schedule_step_1"]),
        (
            "schedule_step_1=100;schedule_lr_1=0.1;schedule_step_2=50;schedule_lr_2=0.01",
            FRCNN,
            0,
            ["schedule_step_2=50 must come after schedule_step_1=100"],
        ),
    ],
)
def test_refusals_name_the_key_and_what_is_allowed(text, model, gpus, words):
    with pytest.raises(InvalidArgument) as err:
        parse(text, model, machine_gpus=gpus)
    for word in words:
        assert word in str(err.value)


def test_nas_needs_two_gpus():
    for gpus in (0, 1):
        with pytest.raises(InvalidArgument, match="frcnn-nas-coco needs 2 or more GPUs"):
            parse("", "frcnn-nas-coco", machine_gpus=gpus)
    with pytest.raises(InvalidArgument, match="num_clones to at least 2"):
        parse("num_clones=1", "frcnn-nas-coco", machine_gpus=4)
    assert parse("", "frcnn-nas-coco", machine_gpus=4).num_clones == 4


def test_num_clones_defaults_to_the_request_then_the_machine():
    assert parse("", FRCNN, machine_gpus=4).num_clones == 4
    assert parse("", FRCNN, machine_gpus=4, requested_gpus=2).num_clones == 2
    with pytest.raises(InvalidArgument, match="contradicts the 2 GPUs"):
        parse("num_clones=4", FRCNN, machine_gpus=4, requested_gpus=2)
    with pytest.raises(InvalidArgument, match="more than this machine has"):
        parse("", FRCNN, machine_gpus=1, requested_gpus=2)


def test_unknown_model_lists_the_catalog():
    with pytest.raises(InvalidArgument, match=r"unknown model type 'yolo'.*ssd-mobilenet-v2-coco"):
        parse("", "yolo", machine_gpus=0)


def test_epochs_auto_follows_the_seed_recommendation():
    ssd = resolve(parse("epochs=auto;batch_size=24", SSD, machine_gpus=0), SSD, 240)
    assert (ssd.steps, ssd.steps_source) == (10000, "auto from 240 images")
    frcnn = resolve(parse("epochs=auto", FRCNN, machine_gpus=2), FRCNN, 240)
    assert frcnn.batch_size == 2  # 1 per GPU
    assert (frcnn.steps, frcnn.steps_source) == (60000, "auto from 240 images")
    assert frcnn.details()["epochs"] == "60000 (auto from 240 images)"
    user = resolve(parse("epochs=123", SSD, machine_gpus=0), SSD, 240)
    assert (user.steps, user.steps_source) == (123, "user")


def test_maskrcnn_stages_are_passes_over_the_training_set():
    args = parse(
        "--stage1_epochs=1;--stage2_epochs=2;--stage3_epochs=3;batch_size=2",
        "maskrcnn",
        machine_gpus=2,
    )
    plan = resolve(args, "maskrcnn", 9)  # 5 steps per pass at 2 images per step
    assert [(s.trains, s.steps) for s in plan.stages] == [
        ("heads", 5),
        ("stage4+", 10),
        ("all", 15),
    ]
    assert plan.steps == 30 and plan.stages[-1].lr_factor == pytest.approx(0.1)
    assert plan.learning_rate == pytest.approx(0.12 / 64 * 2)  # Model Garden's, scaled to 2


def test_plan_refuses_keys_that_could_not_take_effect():
    with pytest.raises(InvalidArgument, match="schedule_step_1=500 is not before the end"):
        resolve(
            parse("epochs=100;schedule_step_1=500;schedule_lr_1=0.1", FRCNN, machine_gpus=0),
            FRCNN,
            10,
        )
    with pytest.raises(InvalidArgument, match="warmup_steps=100 leaves no training"):
        resolve(parse("epochs=100;warmup_steps=100", SSD, machine_gpus=0), SSD, 10)
    with pytest.raises(InvalidArgument, match="inside the 50 warm-up steps"):
        resolve(
            parse(
                "epochs=100;warmup_steps=50;schedule_step_1=20;schedule_lr_1=0.1",
                SSD,
                machine_gpus=0,
            ),
            SSD,
            10,
        )


def test_plan_carries_every_key_given():
    text = (
        "epochs=40;batch_size=4;initial_learning_rate=0.02;warmup_steps=3;input_size=384;"
        "checkpoint_every=7;eval=false;schedule_step_1=10;schedule_lr_1=0.002;"
        "first_stage_max_proposals=64;second_stage_batch_size=32;optimizer=Adam"
    )
    plan = resolve(parse(text, FRCNN, machine_gpus=4, requested_gpus=2), FRCNN, 10)
    assert plan.optimizer == "adam" and plan.details()["optimizer"] == "adam"
    assert (plan.steps, plan.batch_size, plan.learning_rate, plan.warmup_steps) == (40, 4, 0.02, 3)
    assert (plan.input_size, plan.checkpoint_every, plan.evaluate) == (384, 7, False)
    assert plan.schedule == ((10, 0.002),)
    assert (plan.first_stage_max_proposals, plan.second_stage_batch_size) == (64, 32)
    assert plan.num_clones == 2
    assert set(plan.user_arguments) == {k.split("=")[0] for k in text.split(";")}
    assert resolve(parse("", FRCNN, machine_gpus=4), FRCNN, 10).optimizer == "sgd"


def test_pretrained_is_on_by_default_and_every_model_takes_the_key():
    from preannotate.catalog import default_catalog

    for entry in default_catalog():
        spec = entry.argument("pretrained")
        assert spec is not None and (spec.kind, spec.default) == ("bool", "true"), entry.name
    plan = resolve(parse("", SSD, machine_gpus=0), SSD, 10)
    assert plan.pretrained is True and plan.details()["pretrained"] == "true"
    plan = resolve(parse("pretrained=false", SSD, machine_gpus=0), SSD, 10)
    assert plan.pretrained is False and plan.details()["pretrained"] == "false"
    assert plan.user_arguments == {"pretrained": False}
    with pytest.raises(InvalidArgument, match=r"pretrained='coco'.*true or false"):
        parse("pretrained=coco", SSD, machine_gpus=0)


def test_base_model_must_be_of_the_same_namespace():
    assert arguments.parse_base_model("", "team") is None
    assert arguments.parse_base_model("birds", "team") == arguments.BaseModelRef("team", "birds")
    assert arguments.parse_base_model("birds/3", "team").version == 3
    assert arguments.parse_base_model("team/birds/3", "team").version == 3
    with pytest.raises(InvalidArgument, match=r"namespace 'other'.*same namespace"):
        arguments.parse_base_model("other/birds/3", "team")
    with pytest.raises(InvalidArgument, match="namespace 'other'"):
        arguments.base_model_from_proto(
            common_pb2.ModelRef(namespace="other", name="birds", version=1), "team"
        )
    ref = arguments.base_model_from_proto(common_pb2.ModelRef(name="birds"), "team")
    assert ref == arguments.BaseModelRef("team", "birds", 0)
    with pytest.raises(InvalidArgument):
        arguments.parse_base_model("Bad Name", "team")


# --- input_size=auto and crop_size ------------------------------------------------------


@pytest.mark.parametrize(
    ("median", "size"),
    [(720, 768), (700, 640), (639, 640), (330, 384), (120, 128), (1900, 1024), (1024, 1024)],
)
def test_input_size_auto_is_the_frames_median_longer_side_to_a_multiple(median, size):
    plan = resolve(parse("input_size=auto", SSD, machine_gpus=0), SSD, 100, median_long_side=median)
    assert plan.input_size == size
    assert plan.input_size_source == f"auto from the frames' median longer side {median} px"
    assert plan.details()["input_size"] == str(size)


def test_input_size_auto_without_frame_sizes_says_to_export_again():
    args = parse("input_size=auto", SSD, machine_gpus=0)
    with pytest.raises(InvalidArgument, match="export the task again, or give input_size"):
        resolve(args, SSD, 100)


def test_input_size_given_or_default_says_so():
    assert resolve(parse("input_size=384", SSD, machine_gpus=0), SSD, 10).input_size_source == (
        "user"
    )
    plan = resolve(parse("", SSD, machine_gpus=0), SSD, 10, median_long_side=900)
    assert (plan.input_size, plan.input_size_source) == (256, "default")


def test_crop_size_is_kept_in_the_plan_and_its_details():
    plan = resolve(parse("input_size=768;crop_size=256", SSD, machine_gpus=0), SSD, 10)
    assert (plan.input_size, plan.crop_size) == (768, 256)
    assert plan.details()["crop_size"] == "256"
    assert plan.details()["crop_objects"] == "0.5"  # the default share with crops
    assert "crop_size" not in resolve(parse("", SSD, machine_gpus=0), SSD, 10).details()
    plan = resolve(
        parse("input_size=768;crop_size=256;crop_objects=0", SSD, machine_gpus=0), SSD, 10
    )
    assert plan.crop_objects == 0.0 and plan.details()["crop_objects"] == "0"


def test_crop_objects_needs_crops():
    with pytest.raises(
        InvalidArgument, match="crop_objects places training crops and needs crop_size"
    ):
        parse("input_size=768;crop_objects=0.5", SSD, machine_gpus=0)
    with pytest.raises(InvalidArgument, match=r"crop_objects=1\.5 is out of range"):
        parse("input_size=768;crop_size=256;crop_objects=1.5", SSD, machine_gpus=0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "input_size=768;crop_size=200",
            ["crop_size=200 is not a multiple of 128", "use e.g. 128"],
        ),
        ("input_size=256;crop_size=256", ["crop_size=256 must be below input_size=256"]),
        ("crop_size=384", ["crop_size=384 must be below input_size=256"]),
        ("input_size=auto;crop_size=100", ["crop_size=100 is out of range"]),
    ],
)
def test_bad_crop_sizes_are_refused_with_what_to_use(text, words):
    with pytest.raises(InvalidArgument) as caught:
        parse(text, SSD, machine_gpus=0)
    for word in words:
        assert word in str(caught.value)


def test_crop_size_is_for_the_single_stage_model_only():
    with pytest.raises(InvalidArgument, match="unknown argument 'crop_size'"):
        parse("crop_size=256", FRCNN, machine_gpus=1)


def test_auto_input_size_not_above_the_crop_trains_whole_frames():
    args = parse("input_size=auto;crop_size=256", SSD, machine_gpus=0)
    plan = resolve(args, SSD, 10, median_long_side=250)
    assert (plan.input_size, plan.crop_size) == (256, 0)
    assert "crop_size=256 not below it, so whole frames (no crop_objects)" in plan.input_size_source
    assert plan.crop_objects == 0.0
    assert resolve(args, SSD, 10, median_long_side=700).crop_size == 256
