"""The training set, from the exporter's dataset prefix to a local folder.

The exporter writes ``<ns>/datasets/<job_id>/`` with ``train-*.tfrecord``,
``val-*.tfrecord``, ``label_map.pbtxt``, ``classes.csv`` and ``manifest.json``
last. ``fetch()`` refuses a prefix without a manifest (an unfinished export),
then downloads the record files into a local cache (a file already there with
the size the manifest gives is kept), so TensorFlow reads local files.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from preannotate.errors import FailedPrecondition
from preannotate.storage import Storage, read_manifest

TRAIN_PATTERN = "train-*.tfrecord"
VAL_PATTERN = "val-*.tfrecord"
_WANTED = (TRAIN_PATTERN, VAL_PATTERN, "classes.csv", "label_map.pbtxt")


@dataclass(frozen=True)
class LocalDataset:
    prefix: str
    folder: Path
    train_files: tuple[Path, ...]
    val_files: tuple[Path, ...]
    manifest: dict

    @property
    def median_long_side(self) -> int:
        """The training frames' median longer side in pixels (0: an older export
        wrote no frame sizes); what ``input_size=auto`` picks from."""
        sides = self.manifest.get("splits", {}).get("train", {}).get("long_side") or {}
        return int(sides.get("median") or 0)

    @property
    def train_pattern(self) -> str:
        return str(self.folder / TRAIN_PATTERN)

    @property
    def val_pattern(self) -> str:
        return str(self.folder / VAL_PATTERN)


def fetch(storage: Storage, prefix: str, folder: Path) -> LocalDataset:
    """Download the dataset under ``prefix`` into ``folder``."""
    manifest = read_manifest(storage, prefix)
    if manifest is None:
        raise FailedPrecondition(
            f"dataset {prefix} has no manifest.json: its export did not finish; export it again"
        )
    sizes = {name: int(info.get("size", -1)) for name, info in manifest.get("files", {}).items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, val = [], []
    for key in storage.list(prefix):
        name = key[len(prefix) :]
        if "/" in name or not any(fnmatch.fnmatch(name, p) for p in _WANTED):
            continue
        path = folder / name
        if not (path.is_file() and sizes.get(name, -2) == path.stat().st_size):
            tmp = folder / f".part-{name}"
            storage.download_file(key, tmp)
            os.replace(tmp, path)
        if fnmatch.fnmatch(name, TRAIN_PATTERN):
            train.append(path)
        elif fnmatch.fnmatch(name, VAL_PATTERN):
            val.append(path)
    if not train:
        raise FailedPrecondition(f"dataset {prefix} has no {TRAIN_PATTERN} files to train on")
    return LocalDataset(prefix, folder, tuple(sorted(train)), tuple(sorted(val)), manifest)
