"""What the converter reads from a model's prefix, checked and copied to a work folder.

``<namespace>/models/<name>/<version>/`` must be finished (its manifest
exists); the checkpoint the event names must lie under it and be complete
(``preannotate.layout``: its index and every data shard); ``experiment.yaml``
must be there;
``classes.csv`` and the event's classes must agree (the file is written from
the event's classes when the trainer left none). No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from preannotate import classes as class_list
from preannotate import keys, layout
from preannotate.errors import FailedPrecondition, InvalidArgument, NotFound
from preannotate.storage import Storage, is_complete
from preannotate.v1 import events_pb2

EXPERIMENT = "experiment.yaml"
CLASSES = "classes.csv"


@dataclass(frozen=True)
class ModelFiles:
    experiment: Path
    #: Local checkpoint prefix (``.../ckpt-N``), the form ``tf.train.Checkpoint.read`` takes.
    checkpoint: Path
    classes_csv: Path
    classes: list[str]
    #: The checkpoint's storage key as the event named it.
    checkpoint_key: str


@dataclass(frozen=True)
class ModelPlace:
    namespace: str
    name: str
    version: int
    model_prefix: str
    serving_prefix: str
    base_path: str


def place_of(msg: events_pb2.ModelTrained, *, default_namespace: str) -> ModelPlace:
    """Where the event's model lies and where its export goes, every part checked; an event
    that names no namespace is of the service's (``default_namespace``)."""
    namespace = msg.model.namespace or msg.namespace or default_namespace
    if msg.namespace and msg.model.namespace and msg.namespace != msg.model.namespace:
        raise InvalidArgument(
            f"model.trained of namespace {msg.namespace!r} names a model of namespace "
            f"{msg.model.namespace!r}"
        )
    if not msg.model.name:
        raise InvalidArgument(f"model.trained for job {msg.job_id} names no model")
    version = int(msg.model.version)
    prefix = keys.model_prefix(namespace, msg.model.name, version)
    if msg.model_prefix and msg.model_prefix.rstrip("/") + "/" != prefix:
        raise InvalidArgument(
            f"model_prefix {msg.model_prefix!r} is not the model's place {prefix!r}"
        )
    return ModelPlace(
        namespace=namespace,
        name=msg.model.name,
        version=version,
        model_prefix=prefix,
        serving_prefix=keys.serving_prefix(namespace, msg.model.name, version),
        base_path=keys.serving_base(namespace, msg.model.name),
    )


def checkpoint_key(place: ModelPlace, checkpoint: str) -> str:
    """The event's checkpoint as a key under the model prefix (absolute or relative given)."""
    if not checkpoint:
        raise InvalidArgument("model.trained names no checkpoint (e.g. '.../checkpoints/ckpt-100')")
    relative = checkpoint.removeprefix(place.model_prefix)
    if relative == checkpoint and checkpoint.startswith(place.namespace + "/"):
        raise InvalidArgument(
            f"checkpoint {checkpoint!r} is not under the model's prefix {place.model_prefix!r}"
        )
    return keys.join(place.model_prefix, relative)


def fetch_model(
    storage: Storage, msg: events_pb2.ModelTrained, place: ModelPlace, out: Path
) -> ModelFiles:
    """Check the model prefix and copy its checkpoint, experiment and classes under ``out``."""
    if not is_complete(storage, place.model_prefix):
        raise FailedPrecondition(
            f"model {place.model_prefix} has no manifest: its training has not finished"
        )
    ckpt_key = checkpoint_key(place, msg.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    experiment = out / EXPERIMENT
    try:
        storage.download_file(keys.join(place.model_prefix, EXPERIMENT), experiment)
    except NotFound:
        raise FailedPrecondition(
            f"model {place.model_prefix} has no {EXPERIMENT}: the converter rebuilds the "
            "model from it; train the model again"
        ) from None
    classes_csv = out / CLASSES
    try:
        storage.download_file(keys.join(place.model_prefix, CLASSES), classes_csv)
        classes = class_list.parse_classes(classes_csv.read_text())
    except NotFound:
        if not msg.classes:
            raise InvalidArgument(
                f"model {place.model_prefix} has no {CLASSES} and the event lists no classes"
            ) from None
        classes = list(msg.classes)
        classes_csv.write_bytes(class_list.classes_csv(classes).encode())
    if msg.classes and list(msg.classes) != classes:
        raise InvalidArgument(
            f"the event's classes {list(msg.classes)} differ from {CLASSES} {classes}"
        )
    try:
        stored = layout.require_checkpoint(storage, ckpt_key)
    except NotFound as exc:
        raise FailedPrecondition(str(exc)) from None
    checkpoint = layout.download_checkpoint(storage, stored, out / "checkpoint")
    return ModelFiles(
        experiment=experiment,
        checkpoint=checkpoint,
        classes_csv=classes_csv,
        classes=classes,
        checkpoint_key=ckpt_key,
    )
