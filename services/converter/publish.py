"""Put a checked export under ``<namespace>/serving/<name>/<version>/`` and describe it.

Upload order matters to TF Serving, which watches the base path and loads a
version folder once it sees ``saved_model.pb``: variables and assets go
first, ``saved_model.pb`` after them, ``manifest.json`` last (through
``PrefixWriter``, which deletes everything it wrote if any step fails).
``converted_event`` builds the ``ModelConverted`` from a manifest, fresh or
found on a redelivery, so both publish the same event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from preannotate.storage import PrefixWriter, Storage
from preannotate.v1 import common_pb2, events_pb2

MANIFEST_KIND = "serving"
SAVED_MODEL = "saved_model.pb"
TFLITE = "model.tflite"


def tree_sizes(root: Path) -> dict[str, int]:
    """Bytes of the SavedModel's parts: saved_model.pb, variables/, assets/, total."""
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    sizes = {"saved_model_pb": 0, "variables": 0, "assets": 0, "total": 0}
    for path in files:
        size = path.stat().st_size
        top = path.relative_to(root).parts[0]
        sizes["total"] += size
        if path.name == SAVED_MODEL and top == SAVED_MODEL:
            sizes["saved_model_pb"] += size
        elif top in ("variables", "assets"):
            sizes[top] += size
    return sizes


def upload_export(
    storage: Storage,
    prefix: str,
    export_dir: Path,
    tflite: Path | None,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Upload the export (saved_model.pb after the rest) and commit the manifest."""
    storage.delete_prefix(prefix)  # leftovers of an attempt that died without cleaning up
    files = sorted(p for p in Path(export_dir).rglob("*") if p.is_file())
    last = [p for p in files if p.relative_to(export_dir).as_posix() == SAVED_MODEL]
    with PrefixWriter(storage, prefix) as out:
        for path in [p for p in files if p not in last]:
            out.upload(path.relative_to(export_dir).as_posix(), path)
        if tflite is not None:
            out.upload(TFLITE, tflite)
        for path in last:
            out.upload(SAVED_MODEL, path)
        return out.commit(manifest)


def converted_event(
    msg: events_pb2.ModelTrained, manifest: dict[str, Any]
) -> events_pb2.ModelConverted:
    """The ``model.converted`` event of ``msg``'s job, from the serving manifest."""
    model = manifest["model"]
    size = manifest.get("input_size") or [0, 0]
    return events_pb2.ModelConverted(
        job_id=msg.job_id,
        namespace=model["namespace"],
        model=common_pb2.ModelRef(
            namespace=model["namespace"], name=model["name"], version=int(model["version"])
        ),
        model_type=manifest.get("model_type", ""),
        serving_path=manifest["serving_path"],
        base_path=manifest["base_path"],
        signatures=list(manifest.get("signature_names", [])),
        classes=list(manifest.get("classes", [])),
        metrics={k: float(v) for k, v in manifest.get("metrics", {}).items()},
        has_masks=bool(manifest.get("has_masks", False)),
        input_size=int(max(size)),
        tflite_path=manifest.get("tflite_path", ""),
        cvat=msg.cvat,
    )
