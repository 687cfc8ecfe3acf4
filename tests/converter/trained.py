"""Trained models for the converter tests, made by the trainer's own handler.

``build(kind, root)`` writes a tiny dataset with the trainer tests' helper
(``tests.trainer.datasets``), runs ``services.trainer.handlers.
handle_dataset_exported`` on it for a few CPU steps, and leaves in the local
storage folder ``root/storage`` what the trainer leaves: the dataset, the model
version (checkpoints, experiment.yaml, classes.csv, metrics.json, manifest.json)
and ``root/event.json``, the ``ModelTrained`` it returned.

A model trained for a few steps scores every box below Model Garden's default
score threshold (0.05), so the parity check would compare empty lists; the
fixture sets the threshold of its experiment.yaml to 0 and keeps 20
detections per image (post-processing only, the weights are the trainer's).

``kind``: ``ssd`` (ssd-mobilenet-v2-coco, 30 steps) or ``maskrcnn`` (three
stages of one pass over two images). Run as ``python -m tests.converter.trained
KIND ROOT``; ``cached(kind)`` does that once per content of the trainer,
preannotate.vision and this file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import yaml

from tests import prebuild

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
CLASSES = ("rect", "ellipse")
MAX_DETECTIONS = 20
RUNS = {
    "ssd": {
        "model_type": "ssd-mobilenet-v2-coco",
        "model_name": "detector",
        "arguments": "epochs=30;batch_size=2;input_size=128;checkpoint_every=30;"
        "warmup_steps=1;initial_learning_rate=0.01;eval=false;pretrained=false",
        "masks": False,
        "train_images": 6,
    },
    "maskrcnn": {
        "model_type": "maskrcnn",
        "model_name": "segmenter",
        "arguments": "stage1_epochs=1;stage2_epochs=1;stage3_epochs=1;batch_size=1;"
        "input_size=128;first_stage_max_proposals=64;second_stage_batch_size=32;"
        "num_sampled_masks=8;eval=false;pretrained=false",
        "masks": True,
        "train_images": 2,
    },
}
#: What the fixture depends on: a change in any of these rebuilds it.
SOURCES = (
    "services/trainer",
    "preannotate/vision",
    "preannotate/catalog.py",
    "preannotate/arguments.py",
    "tests/trainer/datasets.py",
    "tests/converter/trained.py",
)


def _open_threshold(storage, prefix: str) -> None:
    key = prefix + "experiment.yaml"
    document = yaml.safe_load(storage.get(key))
    generator = document["task"]["model"]["detection_generator"]
    generator["pre_nms_score_threshold"] = 0.0
    generator["max_num_detections"] = MAX_DETECTIONS
    storage.put(key, yaml.safe_dump(document, sort_keys=True).encode())


def build(kind: str, root: Path) -> dict:
    from google.protobuf import json_format

    from preannotate.storage import LocalStorage
    from services.trainer.handlers import handle_dataset_exported
    from services.trainer.settings import TrainerSettings
    from tests.fakes import FakeContext
    from tests.trainer.datasets import write_dataset

    run = RUNS[kind]
    storage = LocalStorage(root / "storage")
    settings = TrainerSettings(
        storage="local",
        storage_root=root / "storage",
        machine_types="cpu=0",
        machine_type="cpu",
        trainer_work_dir=root / "work",
    )
    data = write_dataset(
        storage,
        namespace=NAMESPACE,
        job_id=f"job-{kind}",
        classes=CLASSES,
        train_images=run["train_images"],
        val_images=3,
        size=96,
        masks=run["masks"],
    )
    msg = data.event(run["model_type"], run["arguments"], model_name=run["model_name"])
    outcome = asyncio.run(handle_dataset_exported(msg, FakeContext(storage), settings=settings))
    event = outcome.emits[0].message
    _open_threshold(storage, event.model_prefix)
    shutil.rmtree(root / "work", ignore_errors=True)
    document = json_format.MessageToDict(event)
    (root / "event.json").write_text(json.dumps(document, indent=2))
    return document


def _digest(kind: str) -> str:
    digest = hashlib.sha256(kind.encode())
    for source in SOURCES:
        path = REPO / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(REPO).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "preannotate-converter-fixtures"


def cached(kind: str) -> Path:
    """The folder holding ``storage/`` and ``event.json`` for ``kind``, built once."""
    return prebuild.build_once(
        "tests.converter.trained", kind, cache_root() / f"{kind}-{_digest(kind)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(RUNS))
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    print(json.dumps(build(args.kind, args.root), indent=2))


if __name__ == "__main__":
    main()
