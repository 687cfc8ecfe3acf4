"""The catalog: every model of the design under the seed's names, a strict registry."""

from __future__ import annotations

import sys

import pytest

from preannotate import catalog
from preannotate.errors import AlreadyExists, InvalidArgument

SEED_NAMES = [
    "ssd-mobilenet-v2-coco",
    "frcnn-res50-coco",
    "frcnn-res50-lowp",
    "frcnn-res101-coco",
    "frcnn-inc-resv2-atr-coco",
    "frcnn-nas-coco",
    "maskrcnn",
]


def test_every_seed_model_is_there_in_order():
    assert catalog.default_catalog().names() == SEED_NAMES


def test_seed_defaults():
    ssd = catalog.get("ssd-mobilenet-v2-coco")
    assert (ssd.batch_size, ssd.learning_rate, ssd.steps, ssd.auto_steps_factor) == (
        24,
        0.004,
        15000,
        1000,
    )
    assert (ssd.family, ssd.experiment, ssd.backbone) == (
        "retinanet",
        "retinanet_mobile_coco",
        "mobilenet_v2",
    )
    for name in SEED_NAMES[1:6]:
        entry = catalog.get(name)
        assert (entry.batch_size, entry.batch_per_gpu, entry.learning_rate, entry.steps) == (
            1,
            True,
            0.0003,
            10000,
        )
        assert entry.auto_steps_factor == 500
        assert entry.experiment == "fasterrcnn_resnetfpn_coco"
    assert catalog.get("frcnn-nas-coco").min_gpus == 2
    assert catalog.get("frcnn-res50-lowp").proposals < catalog.get("frcnn-res50-coco").proposals
    assert catalog.get("frcnn-res101-coco").backbone == "resnet101"
    mask = catalog.get("maskrcnn")
    assert mask.has_masks and mask.staged and mask.stage_epochs == (1, 2, 3)
    assert mask.experiment == "maskrcnn_resnetfpn_coco"
    assert not any(catalog.get(n).has_masks for n in SEED_NAMES[:-1])


def test_failed_lookup_lists_what_exists():
    with pytest.raises(InvalidArgument) as err:
        catalog.get("yolo")
    assert "yolo" in str(err.value)
    for name in SEED_NAMES:
        assert name in str(err.value)


def test_registry_refuses_duplicates():
    entry = catalog.get("maskrcnn")
    registry = catalog.Catalog([entry])
    with pytest.raises(AlreadyExists, match="maskrcnn"):
        registry.register(entry)


def test_model_types_for_the_gateway():
    for entry in catalog.default_catalog():
        proto = entry.to_proto()
        assert proto.name == entry.name and proto.built_as and proto.when_to_pick
        assert proto.input_size == entry.input_size and proto.min_gpus == entry.min_gpus
        keys = [a.key for a in proto.arguments]
        assert keys == entry.argument_keys()
        assert all(a.kind and a.default_value and a.help for a in proto.arguments)
        assert "batch_size" in keys and "initial_learning_rate" in keys and "num_clones" in keys
        if entry.staged:
            assert "epochs" not in keys
            assert {"stage1_epochs", "stage2_epochs", "stage3_epochs"} <= set(keys)
        else:
            assert "epochs" in keys and "stage1_epochs" not in keys


def test_the_declarative_modules_import_no_tensorflow():
    import subprocess

    code = (
        "import sys, preannotate.catalog, preannotate.arguments, preannotate.vision\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'official', 'tf_keras')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
