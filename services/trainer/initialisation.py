"""Where a new model's weights come from: a base model, the published weights, or nothing.

Decided in this order (``choose``):

1. A base model (an earlier model of the same namespace) wins. Same model type
   and classes: its whole model is restored. Other classes, or another model
   type with the same backbone and architecture: its backbone and decoder are
   restored and the class-dependent heads start fresh; the job status says so.
2. Else, with ``pretrained`` (the default), the model type's published weights
   from the weights store (``preannotate.weights``: fetched once per deployment
   into storage under ``weights/<model-type>/``, never per job). What is
   restored follows what the weights cover: a whole detector with the job's
   classes: everything; a detector with other classes, or backbone + decoder:
   both, the heads start fresh; a backbone: the backbone only. Weights that are
   missing and cannot be fetched fail the job before training, with the store's
   message (it names ``preannotate weights pull`` and ``import``); there is no
   silent fall back to random.
3. Else (``pretrained=false``) random weights; the store is not touched.

The start is shown as ``coco``, ``imagenet-backbone``, ``base <ns>/<name>/<version>``
or ``random`` (``InitSpec.label``), in the job status, metrics.json, the
manifest and ``preannotate models``.

A resumed job restores its own last checkpoint instead (see ``job``).
``choose()`` decides and downloads; it imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from preannotate import layout
from preannotate.arguments import BaseModelRef
from preannotate.catalog import Catalog, ModelEntry
from preannotate.errors import FailedPrecondition, InvalidArgument, NotFound
from preannotate.storage import Storage

if TYPE_CHECKING:
    from preannotate.weights import Installed

PARTS = ("backbone", "decoder")
KINDS = ("random", "coco", "imagenet-backbone", "base")
TF_CHECKPOINT = "tf-checkpoint"
KERAS_H5 = "keras-h5"

_NOTES = {
    ("all",): "",
    PARTS: "backbone and decoder restored; the class heads start fresh",
    ("backbone",): "backbone restored; decoder and heads start fresh",
}


class WeightsProvider(Protocol):
    """What ``choose`` needs of ``preannotate.weights.WeightsStore``."""

    def ensure(self, model_type: str) -> Installed: ...


@dataclass(frozen=True)
class InitSpec:
    """How a model starts."""

    #: "random", "coco", "imagenet-backbone" or "base".
    kind: str
    #: A local path TensorFlow can read (after ``choose``): a checkpoint prefix,
    #: or a Keras .h5 file when ``format`` is "keras-h5".
    checkpoint: str | None = None
    #: ("all",) or the parts restored ("backbone", "decoder").
    modules: tuple[str, ...] = ()
    #: For people: the base model ("ns/name/3") or where the weights came from.
    source: str = ""
    #: "tf-checkpoint" or "keras-h5".
    format: str = TF_CHECKPOINT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"init kind {self.kind!r} is not one of {KINDS}")

    @property
    def label(self) -> str:
        """The start as shown: coco, imagenet-backbone, base <ns>/<name>/<version>, random."""
        return f"base {self.source}" if self.kind == "base" else self.kind

    def details(self) -> dict[str, str]:
        out = {"init": self.label}
        if self.source and self.kind != "base":
            out["init_from"] = self.source
        note = _NOTES.get(tuple(self.modules), "")
        if note and self.kind != "random":
            out["init_note"] = note
        return out

    def record(self) -> dict[str, Any]:
        """What ``training.json`` keeps, so that a resumed job shows the same start."""
        return {
            "kind": self.kind,
            "modules": list(self.modules),
            "source": self.source,
            "format": self.format,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> InitSpec:
        """The start recorded by ``record`` (no checkpoint: its weights are in the run's own)."""
        kind = str(record.get("kind", "random"))
        if kind == "base-backbone":  # written before the kinds were renamed
            kind = "base"
        return cls(
            kind if kind in KINDS else "random",
            None,
            tuple(record.get("modules", ())),
            str(record.get("source", "")),
            str(record.get("format", TF_CHECKPOINT)),
        )


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
    pretrained: bool,
    weights: WeightsProvider | None,
    cache_dir: Path,
) -> InitSpec:
    """Decide how the model starts, and fetch the checkpoint it starts from.

    ``weights`` is asked (``ensure``) only when there is no base model and
    ``pretrained`` holds; its ``FailedPrecondition`` (weights missing and not
    fetchable) fails the job before training.
    """
    if base is not None:
        return _from_base(storage, entry, catalog, classes, base, cache_dir)
    if not pretrained:
        return InitSpec("random")
    if weights is None:
        raise ValueError("pretrained start without a weights store")
    try:
        installed = weights.ensure(entry.name)
    except FailedPrecondition as exc:
        raise FailedPrecondition(
            f"{exc}. This job starts from them (the default, pretrained=true); to train "
            "from random weights instead, add pretrained=false to its arguments"
        ) from exc
    return from_installed(storage, installed, cache_dir)


def from_installed(storage: Storage, installed: Installed, cache_dir: Path) -> InitSpec:
    """The start from the installed weights of a model type (downloaded into ``cache_dir``)."""
    kind = "imagenet-backbone" if installed.dataset == "imagenet" else "coco"
    if installed.covers in ("detector", "backbone+decoder"):
        # The store's manifest names no classes, so a detector's class heads start fresh.
        modules: tuple[str, ...] = PARTS
    elif installed.covers == "backbone":
        modules = ("backbone",)
    else:
        raise FailedPrecondition(
            f"the installed weights of {installed.model_type} cover {installed.covers!r}, "
            "which the trainer does not know: reinstall them with `preannotate weights pull "
            f"{installed.model_type}`"
        )
    folder = cache_dir / "weights" / installed.model_type / installed.sha256[:16]
    if installed.format == KERAS_H5:
        name = installed.key.rpartition("/")[2]
        local = folder / (name if name.endswith((".h5", ".hdf5")) else name + ".h5")
        if not local.exists():
            folder.mkdir(parents=True, exist_ok=True)
            storage.download_file(installed.key, local)
        path = str(local)
    elif installed.format == TF_CHECKPOINT:
        path = _download_checkpoint(storage, installed.key, folder)
    else:
        raise FailedPrecondition(
            f"the installed weights of {installed.model_type} are in format "
            f"{installed.format!r}; the trainer reads {TF_CHECKPOINT} and {KERAS_H5}"
        )
    return InitSpec(kind, path, modules, installed.url, installed.format)


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
    return InitSpec("base", local, ("all",) if same else PARTS, source)


def _download_checkpoint(storage: Storage, key: str, folder: Path) -> str:
    """Download the complete checkpoint ``key`` (kept in ``folder`` as a cache)."""
    stored = layout.require_checkpoint(storage, key)
    return str(layout.download_checkpoint(storage, stored, folder, keep_existing=True))
