"""Where a new model's weights come from: a base model, a COCO checkpoint, or nothing.

- A base model (an earlier model of the same namespace) of the same model type
  and the same classes: its whole model is restored ("base").
- A base model with other classes, or another model type with the same
  backbone and architecture: its backbone and decoder are restored and the
  class-dependent heads start fresh ("base-backbone"); the job status says so.
- No base model: the catalog entry's COCO checkpoint when the trainer has one
  configured ("coco": backbone and decoder), else random weights ("random").

A resumed job restores its own last checkpoint instead (see ``training``).
``choose()`` decides and downloads; it imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from preannotate import layout
from preannotate.arguments import BaseModelRef
from preannotate.catalog import Catalog, ModelEntry
from preannotate.errors import InvalidArgument, NotFound
from preannotate.storage import Storage

STORAGE_SCHEME = "storage:"
PARTS = ("backbone", "decoder")


@dataclass(frozen=True)
class InitSpec:
    #: "random", "coco", "base" or "base-backbone".
    kind: str
    #: A checkpoint path prefix TensorFlow can read (local after ``choose``).
    checkpoint: str | None = None
    #: ("all",) or the parts restored.
    modules: tuple[str, ...] = ()
    #: For people: the base model ("ns/name/3") or the COCO location.
    source: str = ""

    def details(self) -> dict[str, str]:
        out = {"init": self.kind}
        if self.source:
            out["init_from"] = self.source
        if self.kind == "base-backbone":
            out["init_note"] = "base model's backbone and decoder kept; class heads start fresh"
        return out


def _architecture(entry: ModelEntry) -> tuple[str, str]:
    group = "rcnn" if entry.family in ("fasterrcnn", "maskrcnn") else entry.family
    return group, entry.backbone


def choose(
    storage: Storage,
    *,
    entry: ModelEntry,
    catalog: Catalog,
    classes: list[str],
    base: BaseModelRef | None,
    coco: str | None,
    cache_dir: Path,
) -> InitSpec:
    """Decide how the model starts, and fetch the checkpoint it starts from."""
    if base is not None:
        return _from_base(storage, entry, catalog, classes, base, cache_dir)
    if coco:
        return InitSpec("coco", _fetch_coco(storage, coco, cache_dir), PARTS, coco)
    return InitSpec("random")


def _from_base(
    storage: Storage,
    entry: ModelEntry,
    catalog: Catalog,
    classes: list[str],
    base: BaseModelRef,
    cache_dir: Path,
) -> InitSpec:
    try:
        version, manifest = layout.resolve(storage, base.namespace, base.name, base.version)
    except NotFound as exc:
        raise InvalidArgument(
            f"base model {base}: {exc}; name a finished model of this namespace"
        ) from exc
    source = f"{base.namespace}/{base.name}/{version}"
    base_type = manifest.get("model_type", "")
    if base_type not in catalog:
        raise InvalidArgument(
            f"base model {source} has model type {base_type!r}, not in the catalog"
        )
    base_entry = catalog.get(base_type)
    if _architecture(base_entry) != _architecture(entry):
        raise InvalidArgument(
            f"base model {source} is a {base_type} ({base_entry.backbone}); a {entry.name} can "
            f"start only from a model with the same architecture and backbone ({entry.backbone})"
        )
    key = manifest.get("checkpoint", "")
    if not key:
        raise InvalidArgument(f"base model {source} has no checkpoint in its manifest")
    local = _download_checkpoint(storage, key, cache_dir / "base" / source.replace("/", "_"))
    same = base_type == entry.name and list(manifest.get("classes", [])) == list(classes)
    if same:
        return InitSpec("base", local, ("all",), source)
    return InitSpec("base-backbone", local, PARTS, source)


def _download_checkpoint(storage: Storage, key: str, folder: Path) -> str:
    """Download the complete checkpoint ``key`` (kept in ``folder`` as a cache)."""
    stored = layout.require_checkpoint(storage, key)
    return str(layout.download_checkpoint(storage, stored, folder, keep_existing=True))


def _fetch_coco(storage: Storage, location: str, cache_dir: Path) -> str:
    if location.startswith(STORAGE_SCHEME):
        key = location[len(STORAGE_SCHEME) :].lstrip("/")
        return _download_checkpoint(storage, key, cache_dir / "coco" / key.replace("/", "_"))
    return location
