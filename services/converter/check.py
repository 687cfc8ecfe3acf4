"""Load an exported SavedModel as a server would and run it on the parity images.

Runs in a fresh worker process, so nothing of the export (Python objects,
traced functions, restored variables) can leak into what is checked: only the
files under the export folder. Both signatures run: ``serving_default`` on
the encoded files in one batch (mixed sizes and formats, as a client sends
them), ``serving_image_tensor`` on each decoded image. A TFLite model beside
it is loaded and run once on a blank input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from preannotate.errors import FailedPrecondition
from services.converter import module as serving


@dataclass(frozen=True)
class CheckRequest:
    export_dir: Path
    images: list[Path]
    outputs_out: Path
    has_masks: bool
    tflite: Path | None = None


def _spec(spec: tf.TensorSpec) -> dict[str, Any]:
    return {"dtype": spec.dtype.name, "shape": [None if d is None else int(d) for d in spec.shape]}


def describe(signature) -> dict[str, Any]:
    """Input and output names, dtypes and shapes of one signature (for the manifest)."""
    _args, kwargs = signature.structured_input_signature
    return {
        "inputs": {name: _spec(spec) for name, spec in sorted(kwargs.items())},
        "outputs": {
            name: _spec(spec) for name, spec in sorted(signature.structured_outputs.items())
        },
    }


def _check_outputs(name: str, info: dict[str, Any], has_masks: bool) -> None:
    wanted = list(serving.OUTPUTS) + ([serving.MASKS] if has_masks else [])
    missing = [key for key in wanted if key not in info["outputs"]]
    if missing:
        raise FailedPrecondition(f"signature {name} of the export lacks outputs {missing}")


def _tflite_smoke(path: Path) -> dict[str, Any]:
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    (input_name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    detail = interpreter.get_input_details()[0]
    out = runner(**{input_name: np.zeros(detail["shape"], np.float32)})
    return {
        "input": {"dtype": "float32", "shape": [int(d) for d in detail["shape"]]},
        "outputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in out.items()},
    }


def check_export(request: CheckRequest) -> dict[str, Any]:
    """Run the export's signatures on the images; write their outputs; return facts."""
    started = time.monotonic()
    try:
        loaded = tf.saved_model.load(str(request.export_dir))
    except (tf.errors.OpError, OSError, ValueError) as exc:
        raise FailedPrecondition(f"the exported SavedModel does not load: {exc}") from exc
    load_seconds = time.monotonic() - started
    signatures: dict[str, Any] = {}
    for name in serving.SIGNATURES.values():
        if name not in loaded.signatures:
            raise FailedPrecondition(
                f"the export has no signature {name!r} (it has {sorted(loaded.signatures)})"
            )
        signatures[name] = describe(loaded.signatures[name])
        _check_outputs(name, signatures[name], request.has_masks)
    asset = getattr(loaded, "classes_file", None)
    if asset is None:
        raise FailedPrecondition("the export carries no classes.csv asset")
    classes_text = Path(asset.asset_path.numpy().decode()).read_text()

    outputs: dict[str, np.ndarray] = {}
    started = time.monotonic()
    encoded = [path.read_bytes() for path in request.images]
    batch = loaded.signatures[serving.BYTES_SIGNATURE](inputs=tf.constant(encoded))
    for key, value in batch.items():
        array = value.numpy()
        for i in range(len(encoded)):
            outputs[f"bytes/{i}/{key}"] = array[i : i + 1]
    tensor_fn = loaded.signatures[serving.TENSOR_SIGNATURE]
    for i, data in enumerate(encoded):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        for key, value in tensor_fn(inputs=image[None]).items():
            outputs[f"tensor/{i}/{key}"] = value.numpy()
    run_seconds = time.monotonic() - started
    np.savez(request.outputs_out, **outputs)
    facts: dict[str, Any] = {
        "signatures": signatures,
        "classes_csv": classes_text,
        "load_seconds": round(load_seconds, 2),
        "run_seconds": round(run_seconds, 2),
    }
    if request.tflite is not None:
        try:
            facts["tflite"] = _tflite_smoke(request.tflite)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise FailedPrecondition(f"the TFLite model does not run: {exc}") from exc
    return facts
