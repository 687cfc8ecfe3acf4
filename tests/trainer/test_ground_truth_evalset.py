"""A CVAT Ground Truth job as the model's frozen evaluation set (services/trainer/evalset.py).

From a CVAT project in the stand-in, through the exporter, to the trainer's
``evalset.prepare`` / ``freeze`` (no training: the set is frozen and applied as
a training job does it, before and after it trains):

- a project with an accepted Ground Truth job at the model's first training:
  the set is exactly the GT frames, with the GT job's labels; a later training
  (the GT job deleted meanwhile, so those frames fall into the split by file
  name) never trains on them and is measured on the frozen GT records;
- a project without one freezes its split by file name, as before; a GT job
  added later replaces nothing (the set stays, the manifest's note says why).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from preannotate import layout
from preannotate.catalog import default_catalog
from preannotate.storage import LocalStorage
from services.exporter.handlers import handle_task_annotated
from services.exporter.settings import ExporterSettings
from services.trainer import dataset, evalset
from services.trainer.handlers import validate
from services.trainer.run import TrainingRun
from tests.exporter.test_ground_truth import annotated_project
from tests.exporter.test_project import project_message, records
from tests.fakes import FakeContext
from tests.standins.cvat import CvatStandIn
from tests.trainer.conftest import cpu_settings

NS = "default"
SQUARES = [{"frame": f, "label": "square", "type": "rectangle", "points": [4, 4, 30, 20]}
           for f in (1, 6)]  # fmt: skip


@pytest.fixture
async def cvat():
    async with CvatStandIn(tokens={"secret-token"}) as server:
        yield server


class Trainings:
    """Exports the project and applies the model's set as a training job would."""

    def __init__(self, cvat: CvatStandIn, root: Path, model: str) -> None:
        self.cvat, self.root, self.model = cvat, root, model
        self.storage = LocalStorage(root / "storage")
        self.version = 0

    async def train(self, job_id: str) -> evalset.Prepared:
        settings = ExporterSettings(
            storage="local",
            storage_root=self.root / "storage",
            export_work_dir=self.root / "export",
            cvat_url=self.cvat.url,
            cvat_token="secret-token",
            cvat_poll_interval_seconds=0.02,
            export_val_fraction=0.25,
        )
        msg = project_message(self.cvat.url, job_id)
        msg.training.model_name = self.model
        outcome = await handle_task_annotated(msg, FakeContext(self.storage), settings=settings)
        exported = outcome.emits[0].message
        request = validate(exported, cpu_settings(self.root), default_catalog())
        self.version += 1
        run = TrainingRun(request, self.version)
        data = dataset.fetch(self.storage, request.dataset_prefix, self.root / job_id / "dataset")
        prepared = evalset.prepare(self.storage, run, data, self.root / job_id / "split")
        self.manifest_record = evalset.freeze(self.storage, prepared)
        return prepared

    def frozen(self) -> dict:
        record = layout.read_evaluation_set(self.storage, NS, self.model)
        assert record is not None
        return record

    def frozen_records(self) -> dict[str, list[str]]:
        record = self.frozen()
        prefix = layout.evaluation_files_prefix(NS, self.model, record["frozen_by_job"])
        return records([self.storage.root / (prefix + f["name"]) for f in record["files"]])


async def test_a_ground_truth_job_at_the_first_training_is_the_set_and_never_trained_on(
    cvat, tmp_path
):
    tasks, names = annotated_project(cvat)
    job = cvat.add_gt_job(tasks[0], [1, 6], SQUARES, state="completed", stage="acceptance")
    gt_frames = {f"{tasks[0]}/{names[0][1]}", f"{tasks[0]}/{names[0][6]}"}
    trainings = Trainings(cvat, tmp_path, "birds")

    first = await trainings.train("gt-1")
    record = trainings.frozen()
    assert record["source"] == "cvat-ground-truth"
    assert record["ground_truth_jobs"] == str(job["id"])
    assert {f"{f['task_id']}/{f['file_name']}" for f in record["frames"]} == gt_frames
    frozen = trainings.frozen_records()
    assert set(frozen) == gt_frames
    assert all(labels == ["square"] for labels in frozen.values())  # the GT job's labels
    assert not gt_frames & set(records(list(first.data.train_files)))
    assert trainings.manifest_record["source"] == "cvat-ground-truth"

    # The GT job goes; its frames now fall into the split by file name, some into
    # train: the later training leaves them out and is measured on the frozen set.
    cvat.remove_gt_job(job["id"])
    later = await trainings.train("gt-2")
    dataset_train = records(sorted((tmp_path / "gt-2" / "dataset").glob("train-*.tfrecord")))
    leaked = gt_frames & set(dataset_train)
    assert leaked  # the test means something only if the split put some there
    assert not gt_frames & set(records(list(later.data.train_files)))
    assert later.record["excluded_from_training"] == len(leaked)
    assert later.record["set"] == "gt-1" and later.record["source"] == "cvat-ground-truth"
    assert records(list(later.data.val_files)) == frozen


async def test_without_a_ground_truth_job_the_split_is_frozen_and_a_later_one_replaces_nothing(
    cvat, tmp_path
):
    tasks, names = annotated_project(cvat)
    trainings = Trainings(cvat, tmp_path, "herons")
    first = await trainings.train("n-1")
    record = trainings.frozen()
    assert record["source"] == "validation-split" and "ground_truth_jobs" not in record
    split_frames = set(records(list(first.data.val_files)))
    assert {f"{f['task_id']}/{f['file_name']}" for f in record["frames"]} == split_frames
    assert "note" not in trainings.manifest_record

    job = cvat.add_gt_job(tasks[0], [1, 6], SQUARES, state="completed", stage="acceptance")
    later = await trainings.train("n-2")
    assert trainings.frozen() == record  # one measuring stick per model
    assert later.record["set"] == "n-1" and later.record["source"] == "validation-split"
    assert f"jobs {job['id']}" in later.record["note"] and "stays" in later.record["note"]
    assert records(list(later.data.val_files)).keys() == split_frames
    trained_on = set(records(list(later.data.train_files)))
    gt_frames = {f"{tasks[0]}/{names[0][1]}", f"{tasks[0]}/{names[0][6]}"}
    assert not (split_frames | gt_frames) & trained_on
