"""The manifest-written-last rule.

A prefix (a dataset, a model version, a serving version) is finished when its
``manifest.json`` exists; a prefix without one is unfinished and is ignored by
readers. ``PrefixWriter`` writes the files first and the manifest last, and on
failure deletes what it wrote, so nothing half-written is ever taken as done.
Which versions of a model are finished, and whether a checkpoint is complete,
is read with ``preannotate.layout``.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from preannotate.errors import BadEvent, NotFound
from preannotate.keys import check_relative, join
from preannotate.storage.base import Storage, check_prefix

MANIFEST = "manifest.json"


def read_manifest(storage: Storage, prefix: str) -> dict[str, Any] | None:
    """The manifest under ``prefix``, or None when the prefix is unfinished."""
    try:
        data = storage.get(join(check_prefix(prefix), MANIFEST))
    except NotFound:
        return None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise BadEvent(f"manifest under {prefix!r} is not JSON: {exc}") from exc


def is_complete(storage: Storage, prefix: str) -> bool:
    return storage.exists(join(check_prefix(prefix), MANIFEST))


class PrefixWriter:
    """Writes files under one prefix, then the manifest; cleans up on failure.

    Use as a context manager::

        with PrefixWriter(storage, prefix) as out:
            out.put("label_map.pbtxt", data)
            out.upload_tree(local_dir)
            out.commit({"classes": [...]})

    Leaving the block without ``commit`` (an exception, a cancel) deletes every
    key under the prefix, so readers never see a half-written prefix.
    """

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.storage = storage
        self.prefix = check_prefix(prefix)
        self.files: dict[str, dict[str, Any]] = {}
        self.committed = False

    def __enter__(self) -> PrefixWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.storage.delete_prefix(self.prefix)

    def put(self, name: str, data: bytes) -> str:
        if name == MANIFEST:
            raise ValueError("the manifest is written by commit()")
        key = join(self.prefix, name)
        self.storage.put(key, data)
        self.files[check_relative(name)] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        return key

    def upload(self, name: str, path: Path) -> str:
        if name == MANIFEST:
            raise ValueError("the manifest is written by commit()")
        key = join(self.prefix, name)
        self.storage.upload_file(key, Path(path))
        self.record(name, path)
        return key

    def record(self, name: str, path: Path) -> None:
        """List a file already stored under the prefix by other means (the trainer's
        checkpoints), with the size and hash of its local copy ``path``."""
        self.files[check_relative(name)] = {
            "size": os.path.getsize(path),
            "sha256": _sha256_file(Path(path)),
        }

    def upload_tree(self, root: Path, under: str = "") -> list[str]:
        """Upload every file below ``root`` (relative names kept)."""
        keys = []
        root = Path(root)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            keys.append(self.upload(f"{under.rstrip('/')}/{rel}" if under else rel, path))
        return keys

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write ``manifest.json`` last; returns the manifest as written."""
        body = dict(manifest)
        body.setdefault("created_at", datetime.now(UTC).isoformat())
        body["files"] = self.files
        self.storage.put(
            join(self.prefix, MANIFEST), json.dumps(body, indent=2, sort_keys=True).encode()
        )
        self.committed = True
        return body


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
