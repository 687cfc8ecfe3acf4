"""The read side of the storage layout: finished versions and checkpoints.

Names and prefixes come from ``preannotate.keys``; a prefix is finished when
its manifest exists (``preannotate.storage.manifest``, which also reads it).
This module answers, for every service, the questions asked of what is stored:

- which versions of a model are finished, under ``<ns>/models/`` (trained) or
  ``<ns>/serving/`` (exported): ``finished``, ``finished_versions``,
  ``resolve``; and every version folder, finished or not
  (``version_folders``, for the trainer's claims);
- whether a checkpoint is complete, one rule for all: its ``<stem>.index``
  and every data shard ``<stem>.data-<i>-of-<N>`` for i in 0..N-1, all with
  the same N (``complete_checkpoint``, ``require_checkpoint``); and its
  download to a local folder (``download_checkpoint``);
- beside a model's versions, under ``<ns>/models/<name>/``: its frozen
  evaluation set (``evaluation/set.json`` and the record files it names:
  ``read_evaluation_set``, ``create_evaluation_set``) and its promotion log
  (``promotion/<seq>.json``, each entry created once: ``read_promotion_log``,
  ``append_promotion``), and continuous training's records
  (``retrain/{requested,started}/<generation>.json``, each created once:
  ``read_retrain_records``, ``create_retrain_record``) and the corrections
  people made to its pre-annotations (``corrections/``: ``create_proposal``,
  ``read_proposal``, ``create_corrections``, ``read_corrections``). None of
  these folders is a version folder.

Blocking, like ``Storage``: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from preannotate import keys
from preannotate.errors import FailedPrecondition, NotFound, UnsafeName
from preannotate.storage import MANIFEST, Storage, read_manifest

MODELS = "models"
SERVING = "serving"
Area = Literal["models", "serving"]

#: A version folder as ``keys`` writes it: a whole number from 1, no leading zero.
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_CHECKPOINT_FILE = re.compile(
    r"^(?P<stem>.+)\.(?:index|data-(?P<shard>\d{5})-of-(?P<count>\d{5}))$"
)


@dataclass(frozen=True, order=True)
class Version:
    """A finished version of a model: ``<namespace>/<area>/<name>/<version>/``."""

    namespace: str
    name: str
    version: int
    area: Area = MODELS

    @property
    def prefix(self) -> str:
        if self.area == SERVING:
            return keys.serving_prefix(self.namespace, self.name, self.version)
        return keys.model_prefix(self.namespace, self.name, self.version)


def _root(namespace: str | None, name: str | None, area: Area) -> str:
    if area not in (MODELS, SERVING):
        raise ValueError(f"area {area!r} is not {MODELS!r} or {SERVING!r}")
    if namespace is None:
        if name is not None:
            raise ValueError("a model name needs its namespace")
        return ""
    root = f"{keys.check_name(namespace, 'namespace')}/{area}/"
    return root if name is None else root + keys.check_name(name, "model name") + "/"


def finished(
    storage: Storage,
    namespace: str | None = None,
    name: str | None = None,
    *,
    area: Area = MODELS,
) -> list[Version]:
    """Every finished version under ``area`` (of every namespace when None, of one
    model when ``name`` is given), sorted by namespace, name, version.

    Keys that do not follow the layout (an unsafe name, a version "01") are
    not versions: the product never writes them.
    """
    out = []
    for key in storage.list(_root(namespace, name, area)):
        parts = key.split("/")
        if (
            len(parts) == 5
            and parts[1] == area
            and parts[4] == MANIFEST
            and keys.NAME_PATTERN.fullmatch(parts[0])
            and keys.NAME_PATTERN.fullmatch(parts[2])
            and _VERSION.fullmatch(parts[3])
        ):
            out.append(Version(parts[0], parts[2], int(parts[3]), area))
    return sorted(out)


def finished_versions(
    storage: Storage, namespace: str, name: str, *, area: Area = MODELS
) -> list[int]:
    """The finished version numbers of one model, oldest first."""
    return [v.version for v in finished(storage, namespace, name, area=area)]


def resolve(
    storage: Storage, namespace: str, name: str, version: int = 0, *, area: Area = MODELS
) -> tuple[int, dict[str, Any]]:
    """(version, manifest) of a finished version; version 0 means the newest.

    ``NotFound`` when there is none.
    """
    if version == 0:
        ready = finished_versions(storage, namespace, name, area=area)
        if not ready:
            raise NotFound(f"model {namespace}/{name} has no finished version")
        version = ready[-1]
    manifest = read_manifest(storage, Version(namespace, name, version, area).prefix)
    if manifest is None:
        raise NotFound(f"model {namespace}/{name}/{version} does not exist or is not finished")
    return version, manifest


def version_folders(
    storage: Storage, namespace: str, name: str, *, area: Area = MODELS
) -> dict[int, list[str]]:
    """Every version folder of a model that holds anything (finished or not), with
    the keys below it relative to the folder."""
    root = _root(namespace, name, area)
    found: dict[int, list[str]] = {}
    for key in storage.list(root):
        folder, _, rest = key[len(root) :].partition("/")
        if _VERSION.fullmatch(folder) and rest:
            found.setdefault(int(folder), []).append(rest)
    return found


@dataclass(frozen=True)
class CheckpointFiles:
    """A complete checkpoint in storage."""

    #: The checkpoint's key, the path prefix TensorFlow reads: ``.../ckpt-<step>``.
    key: str
    #: Its file names, in the key's folder: the index and every data shard.
    files: tuple[str, ...]

    @property
    def folder(self) -> str:
        return self.key.rpartition("/")[0] + "/"

    @property
    def stem(self) -> str:
        return self.key.rpartition("/")[2]


def _checkpoint_files(storage: Storage, key: str) -> list[str]:
    """The names of the files of checkpoint ``key`` directly in its folder, sorted."""
    keys.check_relative(key)
    folder, _, stem = key.rpartition("/")
    if not folder:
        raise UnsafeName(f"checkpoint {key!r} is not '<folder>/<name>'")
    folder += "/"
    names = []
    for candidate in storage.list(folder):
        name = candidate[len(folder) :]
        match = _CHECKPOINT_FILE.fullmatch(name)
        if "/" not in name and match and match["stem"] == stem:
            names.append(name)
    return sorted(names)


def _missing(stem: str, names: list[str]) -> list[str]:
    """What checkpoint ``stem`` lacks, given the names of its files found."""
    missing = [] if f"{stem}.index" in names else [f"{stem}.index"]
    matches = [_CHECKPOINT_FILE.fullmatch(name) for name in names]
    counts = {int(m["count"]) for m in matches if m and m["count"]}
    if not counts:
        return [*missing, f"{stem}.data-00000-of-<N>"]
    if len(counts) > 1 or 0 in counts:
        return [*missing, f"data shards of one count (found -of- {sorted(counts)})"]
    (count,) = counts
    for shard in range(count):
        name = f"{stem}.data-{shard:05d}-of-{count:05d}"
        if name not in names:
            missing.append(name)
    return missing


def complete_checkpoint(storage: Storage, key: str) -> CheckpointFiles | None:
    """The files of checkpoint ``key`` when it is complete, else None."""
    names = _checkpoint_files(storage, key)
    stem = key.rpartition("/")[2]
    return None if _missing(stem, names) else CheckpointFiles(key, tuple(names))


def require_checkpoint(storage: Storage, key: str) -> CheckpointFiles:
    """The files of checkpoint ``key``: ``NotFound`` when none is stored,
    ``FailedPrecondition`` naming what is missing when it is incomplete."""
    names = _checkpoint_files(storage, key)
    stem = key.rpartition("/")[2]
    if not names:
        raise NotFound(f"checkpoint {key} is not in storage (no {stem}.index, no data)")
    missing = _missing(stem, names)
    if missing:
        raise FailedPrecondition(
            f"checkpoint {key} is incomplete in storage: it needs {stem}.index and every "
            f"{stem}.data-*-of-N shard; missing {', '.join(missing)}; found {', '.join(names)}"
        )
    return CheckpointFiles(key, tuple(names))


def download_checkpoint(
    storage: Storage, checkpoint: CheckpointFiles, folder: Path, *, keep_existing: bool = False
) -> Path:
    """Download the checkpoint's files into ``folder``; returns the local path prefix
    (``folder/<stem>``) that ``tf.train.Checkpoint.read`` takes. ``keep_existing``:
    a file already there is not downloaded again (a cache)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in checkpoint.files:
        target = folder / name
        if not (keep_existing and target.exists()):
            storage.download_file(checkpoint.folder + name, target)
    return folder / checkpoint.stem


# --- per model, beside its versions: the evaluation set and the promotion log -------

#: ``<ns>/models/<name>/evaluation/``: the model's frozen evaluation set.
EVALUATION = "evaluation"
#: The record of the frozen set, created once with ``put_if_absent``.
EVALUATION_RECORD = "set.json"
#: ``<ns>/models/<name>/promotion/<seq>.json``: the promotion log.
PROMOTION = "promotion"
_PROMOTION_ENTRY = re.compile(r"^(?P<seq>[1-9][0-9]{0,17})\.json$")


def evaluation_prefix(namespace: str, name: str) -> str:
    """``<ns>/models/<name>/evaluation/``: the frozen evaluation set's record and files."""
    return keys.models_root(namespace, name) + EVALUATION + "/"


def evaluation_files_prefix(namespace: str, name: str, job_id: str) -> str:
    """Where the job that froze the set put its records: ``.../evaluation/<job_id>/``."""
    return evaluation_prefix(namespace, name) + keys.check_name(job_id, "job id") + "/"


def read_evaluation_set(storage: Storage, namespace: str, name: str) -> dict[str, Any] | None:
    """The model's frozen evaluation set record, or None before its first training."""
    key = evaluation_prefix(namespace, name) + EVALUATION_RECORD
    try:
        record = json.loads(storage.get(key))
    except NotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(
            f"{key} is not JSON ({exc}); delete it to freeze a new set"
        ) from exc
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        raise FailedPrecondition(f"{key} has no 'files' list; delete it to freeze a new set")
    return record


def create_evaluation_set(
    storage: Storage, namespace: str, name: str, record: dict[str, Any]
) -> bool:
    """Freeze the model's evaluation set: True when this call created the record."""
    key = evaluation_prefix(namespace, name) + EVALUATION_RECORD
    return storage.put_if_absent(key, json.dumps(record, indent=2, sort_keys=True).encode())


def promotion_prefix(namespace: str, name: str) -> str:
    """``<ns>/models/<name>/promotion/``: one entry per decision, ``<seq>.json``."""
    return keys.models_root(namespace, name) + PROMOTION + "/"


def read_promotion_log(storage: Storage, namespace: str, name: str) -> list[dict[str, Any]]:
    """Every entry of the model's promotion log, oldest first (``seq`` set from the key).

    Keys that are not ``<seq>.json`` (the conditional-write fallback's
    ``<seq>.json.candidates/``) are not entries.
    """
    prefix = promotion_prefix(namespace, name)
    found = []
    for key in storage.list(prefix):
        match = _PROMOTION_ENTRY.fullmatch(key[len(prefix) :])
        if match:
            found.append((int(match["seq"]), key))
    entries = []
    for seq, key in sorted(found):
        try:
            entry = json.loads(storage.get(key))
        except NotFound:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FailedPrecondition(f"promotion log entry {key} is not JSON: {exc}") from exc
        if not isinstance(entry, dict):
            raise FailedPrecondition(f"promotion log entry {key} is not a JSON object")
        entries.append({**entry, "seq": seq})
    return entries


def append_promotion(
    storage: Storage, namespace: str, name: str, seq: int, entry: dict[str, Any]
) -> bool:
    """Create log entry ``seq`` (``put_if_absent``): False when another writer took it."""
    key = promotion_prefix(namespace, name) + f"{keys.check_version(seq)}.json"
    body = json.dumps({**entry, "seq": seq}, indent=2, sort_keys=True).encode()
    return storage.put_if_absent(key, body)


# --- per model, beside its versions: continuous training's records ------------------


def _create_json(storage: Storage, key: str, record: dict[str, Any]) -> bool:
    return storage.put_if_absent(key, json.dumps(record, indent=2, sort_keys=True).encode())


def _read_json(storage: Storage, key: str, what: str) -> dict[str, Any] | None:
    try:
        record = json.loads(storage.get(key))
    except NotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"{what} {key} is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise FailedPrecondition(f"{what} {key} is not a JSON object")
    return record


#: ``<ns>/models/<name>/retrain/{requested,started}/<generation>.json``: which retrains
#: of the model were asked for and which were started (``services/gateway/retrain.py``).
RETRAIN = "retrain"
RETRAIN_KINDS = ("requested", "started")


def retrain_prefix(namespace: str, name: str, kind: str) -> str:
    """``<ns>/models/<name>/retrain/<kind>/``, ``kind`` one of ``RETRAIN_KINDS``."""
    if kind not in RETRAIN_KINDS:
        raise ValueError(f"retrain record kind {kind!r} is not one of {RETRAIN_KINDS}")
    return keys.models_root(namespace, name) + f"{RETRAIN}/{kind}/"


def read_retrain_records(
    storage: Storage, namespace: str, name: str, kind: str
) -> dict[int, dict[str, Any]]:
    """The model's ``kind`` retrain records by generation (keys not ``<n>.json`` skipped)."""
    prefix = retrain_prefix(namespace, name, kind)
    out: dict[int, dict[str, Any]] = {}
    for key in storage.list(prefix):
        match = _PROMOTION_ENTRY.fullmatch(key[len(prefix) :])
        record = _read_json(storage, key, "retrain record") if match else None
        if record is not None:
            out[int(match["seq"])] = record
    return out


def create_retrain_record(
    storage: Storage, namespace: str, name: str, kind: str, generation: int, record: dict[str, Any]
) -> bool:
    """Create record ``generation`` of ``kind`` once (``put_if_absent``): False when it exists."""
    key = retrain_prefix(namespace, name, kind) + f"{keys.check_version(generation)}.json"
    return _create_json(storage, key, {**record, "generation": generation})


# --- per model: the corrections a person still made (preannotate/corrections.py) ----

#: ``<ns>/models/<name>/corrections/``: ``proposed/<task id>.json`` (the shapes a
#: pre-annotation run wrote, as CVAT held them when it ended) and
#: ``<version>/<cvat job id>.json`` (what the person changed in that job).
CORRECTIONS = "corrections"


def corrections_prefix(namespace: str, name: str) -> str:
    return keys.models_root(namespace, name) + CORRECTIONS + "/"


def proposal_key(namespace: str, name: str, task_id: int) -> str:
    return corrections_prefix(namespace, name) + f"proposed/{keys.check_version(task_id)}.json"


def create_proposal(
    storage: Storage, namespace: str, name: str, task_id: int, record: dict[str, Any]
) -> bool:
    """Keep what a pre-annotation run proposed for CVAT task ``task_id`` (once)."""
    return _create_json(storage, proposal_key(namespace, name, task_id), record)


def read_proposal(
    storage: Storage, namespace: str, name: str, task_id: int
) -> dict[str, Any] | None:
    return _read_json(storage, proposal_key(namespace, name, task_id), "proposal")


def create_corrections(
    storage: Storage, namespace: str, name: str, version: int, cvat_job: int, record: dict
) -> bool:
    """Store the corrections of CVAT job ``cvat_job`` to ``version``'s proposals (once)."""
    key = (
        corrections_prefix(namespace, name)
        + f"{keys.check_version(version)}/{keys.check_version(cvat_job)}.json"
    )
    return _create_json(storage, key, record)


_CORRECTIONS_RECORD = re.compile(r"^(?P<version>[1-9][0-9]{0,17})/(?P<job>[1-9][0-9]{0,17})\.json$")


def read_corrections(storage: Storage, namespace: str, name: str) -> dict[int, list[dict]]:
    """Every corrections record of the model, by version."""
    prefix = corrections_prefix(namespace, name)
    out: dict[int, list[dict]] = {}
    for key in sorted(storage.list(prefix)):
        match = _CORRECTIONS_RECORD.fullmatch(key[len(prefix) :])
        if not match:
            continue
        record = _read_json(storage, key, "corrections record")
        if record is not None:
            out.setdefault(int(match["version"]), []).append(record)
    return out
