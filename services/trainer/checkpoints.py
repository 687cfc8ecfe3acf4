"""Checkpoints between the local model folder and storage.

Locally the training loop writes TensorFlow's usual layout: ``ckpt-<step>.index``,
``ckpt-<step>.data-*`` and the ``checkpoint`` state file in one folder. In
storage each checkpoint gets a folder of its own::

    <model prefix>/checkpoints/ckpt-<step>/ckpt-<step>.index
    <model prefix>/checkpoints/ckpt-<step>/ckpt-<step>.data-00000-of-00001

so that an old one is removed with the storage's delete-by-prefix, and the
checkpoint's key (what ``model.trained`` carries, what TensorFlow restores
once the files are local) is ``.../checkpoints/ckpt-<step>/ckpt-<step>``.

``upload()`` mirrors the local folder after every save: data files first, the
index last, then it deletes the stored checkpoints that this worker uploaded
(or adopted when it resumed) and the folder no longer holds. An index in
storage therefore always has its data, and a worker never deletes a
checkpoint another worker wrote. ``fence`` (``Lease.check``) runs before
anything is written or deleted: a worker that lost the job's lease raises
there and touches nothing. ``download_latest()`` is
the resume side: the newest complete checkpoint (``preannotate.layout``'s
rule: its index and every data shard), downloaded, with a state file naming
it, so the loop restores it and goes on from its step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from preannotate import layout
from preannotate.storage import Storage

CHECKPOINTS = "checkpoints/"
STATE_FILE = "checkpoint"
_CKPT = re.compile(r"^ckpt-(\d+)\.(?:index|data-\d{5}-of-\d{5})$")


@dataclass(frozen=True)
class CheckpointRef(layout.CheckpointFiles):
    """A complete stored checkpoint (key ".../checkpoints/ckpt-<step>/ckpt-<step>")
    and its step."""

    step: int


def folder_key(prefix: str, step: int) -> str:
    return f"{prefix}{CHECKPOINTS}ckpt-{step}/"


def checkpoint_key(prefix: str, step: int) -> str:
    return f"{folder_key(prefix, step)}ckpt-{step}"


def _step_of(name: str) -> int | None:
    match = _CKPT.match(name)
    return int(match.group(1)) if match else None


def local_steps(local_dir: Path) -> dict[int, list[Path]]:
    """The checkpoint files of the local folder, by step."""
    found: dict[int, list[Path]] = {}
    for path in Path(local_dir).iterdir():
        step = _step_of(path.name)
        if step is not None and path.is_file():
            found.setdefault(step, []).append(path)
    return found


def upload(
    storage: Storage,
    local_dir: Path,
    prefix: str,
    uploaded: set[int],
    fence: Callable[[], None] = lambda: None,
) -> list[int]:
    """Mirror the local checkpoints to storage; returns the steps stored now.

    ``uploaded`` holds the steps this worker stored (or adopted on resume) and
    is updated, so each checkpoint goes up once and only these are pruned.
    ``fence`` raises when this worker may no longer write (its lease was lost).
    """
    here = local_steps(local_dir)
    for step in sorted(set(here) - uploaded):
        files = sorted(here[step], key=lambda p: (p.suffix == ".index", p.name))
        fence()
        for path in files:  # data first, index last
            storage.upload_file(folder_key(prefix, step) + path.name, path)
        uploaded.add(step)
    for step in sorted(uploaded - set(here)):
        fence()
        storage.delete_prefix(folder_key(prefix, step))
        uploaded.discard(step)
    return sorted(uploaded)


def adopt(
    storage: Storage,
    prefix: str,
    resumed: int | None,
    fence: Callable[[], None] = lambda: None,
) -> set[int]:
    """On (re)start, with the job's lease held: the stored steps this worker now owns.

    Checkpoints up to the one it resumed from (``resumed``, None for a fresh
    start) were written by earlier holders of this job and are pruned like its
    own; those after it are uploads that broke and are deleted now, so a step
    the loop saves again is uploaded whole.
    """
    owned = set()
    for step in stored_steps(storage, prefix):
        if resumed is not None and step <= resumed:
            owned.add(step)
        else:
            fence()
            storage.delete_prefix(folder_key(prefix, step))
    return owned


def stored_steps(storage: Storage, prefix: str) -> list[int]:
    """Steps that have a folder under ``checkpoints/`` (complete or not)."""
    base = prefix + CHECKPOINTS
    steps = set()
    for key in storage.list(base):
        folder = key[len(base) :].split("/", 1)[0]
        if folder.startswith("ckpt-") and folder[5:].isdigit():
            steps.add(int(folder[5:]))
    return sorted(steps)


def latest(storage: Storage, prefix: str) -> CheckpointRef | None:
    """The newest stored checkpoint that is complete (its index and every data shard)."""
    for step in reversed(stored_steps(storage, prefix)):
        found = layout.complete_checkpoint(storage, checkpoint_key(prefix, step))
        if found is not None:
            return CheckpointRef(found.key, found.files, step)
    return None


def download_latest(storage: Storage, prefix: str, local_dir: Path) -> CheckpointRef | None:
    """Resume: the newest stored checkpoint, downloaded, with a state file naming it."""
    ref = latest(storage, prefix)
    if ref is None:
        return None
    layout.download_checkpoint(storage, ref, local_dir)
    (Path(local_dir) / STATE_FILE).write_text(
        f'model_checkpoint_path: "ckpt-{ref.step}"\nall_model_checkpoint_paths: "ckpt-{ref.step}"\n'
    )
    return ref
