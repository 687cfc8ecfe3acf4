"""The seed's argument string, parsed against a catalog entry, and the plan it makes.

    epochs=100;batch_size=24
    initial_learning_rate=0.001; num_clones=4;
    --stage1_epochs=1;--stage2_epochs=2;--stage3_epochs=3      (maskrcnn)

``parse()`` turns the string into a typed, frozen ``Arguments`` and refuses,
with ``InvalidArgument`` naming the key, the value and what is allowed: unknown
keys, malformed or out-of-range values, a key given twice, more clones than
the machine has GPUs, and a model that needs more GPUs than the machine has.
Spaces, a trailing ``;``, leading ``--`` and ``-`` for ``_`` are tolerated.
The gateway calls it before publishing; the trainer calls it again.

``resolve()`` adds what only the trainer knows (the dataset's size) and gives
the ``Plan``: the steps and how they were chosen ("default", "user",
"auto from N images"), batch, learning rate schedule, Mask R-CNN stages. Every
key the user set ends up in the plan; a key that could not take effect is
refused, never dropped.

``base_model_ref()`` checks a base model reference: same namespace only.
Imports no TensorFlow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from preannotate.catalog import (
    AUTO_INPUT_MAX,
    BOOL,
    CHOICE,
    DEFAULT_CROP_OBJECTS,
    FLOAT,
    INT,
    INT_OR_AUTO,
    ArgumentSpec,
    ModelEntry,
)
from preannotate.catalog import get as catalog_get
from preannotate.errors import InvalidArgument
from preannotate.keys import check_name

_INT = re.compile(r"^[+]?\d+$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
STAGE_KEYS = ("stage1_epochs", "stage2_epochs", "stage3_epochs")


@dataclass(frozen=True)
class Arguments:
    """What the user typed, typed. ``None``: the key was not given."""

    model_type: str
    text: str
    #: GPUs (replicas) to train on: given, or the request's GPUs, or the machine's.
    num_clones: int
    #: The canonical keys the user set.
    given: frozenset[str] = frozenset()
    epochs: int | Literal["auto"] | None = None
    batch_size: int | None = None
    initial_learning_rate: float | None = None
    warmup_steps: int | None = None
    input_size: int | Literal["auto"] | None = None
    checkpoint_every: int | None = None
    eval: bool | None = None
    pretrained: bool | None = None
    optimizer: str | None = None
    schedule_step_1: int | None = None
    schedule_lr_1: float | None = None
    schedule_step_2: int | None = None
    schedule_lr_2: float | None = None
    first_stage_max_proposals: int | None = None
    second_stage_batch_size: int | None = None
    num_sampled_masks: int | None = None
    crop_size: int | None = None
    crop_objects: float | None = None
    stage1_epochs: int | None = None
    stage2_epochs: int | None = None
    stage3_epochs: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The keys the user set, with their typed values."""
        return {key: getattr(self, key) for key in sorted(self.given)}


_FIELDS = {f.name for f in fields(Arguments)}


@dataclass(frozen=True)
class Stage:
    """One Mask R-CNN training stage."""

    number: int
    #: "heads", "stage4+" or "all": which layers train.
    trains: str
    epochs: int
    steps: int
    #: Learning rate of this stage as a fraction of the plan's learning rate.
    lr_factor: float


@dataclass(frozen=True)
class Plan:
    """The training a job will do: everything resolved, nothing left to defaults."""

    model_type: str
    num_clones: int
    #: Images per step over all replicas.
    batch_size: int
    learning_rate: float
    steps: int
    #: How ``steps`` was chosen: "default", "user", "auto from N images",
    #: "stages over N images".
    steps_source: str
    warmup_steps: int
    input_size: int
    #: None: the trainer's setting.
    checkpoint_every: int | None
    evaluate: bool
    #: Start from the model type's published weights (the ``pretrained`` key;
    #: a base model still wins). False: random start.
    pretrained: bool = True
    #: "sgd" (momentum 0.9) or "adam".
    optimizer: str = "sgd"
    #: (step, learning rate) boundaries after warm-up; empty: constant.
    schedule: tuple[tuple[int, float], ...] = ()
    stages: tuple[Stage, ...] = ()
    first_stage_max_proposals: int = 0
    second_stage_batch_size: int = 0
    num_sampled_masks: int = 0
    #: Training crops of this size cut from frames scaled to ``input_size`` (0: whole frames).
    crop_size: int = 0
    #: Share of those crops centred near an object (0 without crops).
    crop_objects: float = 0.0
    #: How ``input_size`` was chosen: "default", "user", "auto from ...".
    input_size_source: str = "default"
    train_images: int = 0
    #: The keys the user set, as typed values (for the job status and manifest).
    user_arguments: dict[str, Any] = field(default_factory=dict)

    def details(self) -> dict[str, str]:
        """Facts for the job status's ``details`` map."""
        out = {
            "epochs": f"{self.steps} ({self.steps_source})",
            "steps": str(self.steps),
            "steps_source": self.steps_source,
            "batch_size": str(self.batch_size),
            "learning_rate": f"{self.learning_rate:g}",
            "optimizer": self.optimizer,
            "num_clones": str(self.num_clones),
            "input_size": str(self.input_size),
            "input_size_source": self.input_size_source,
            "pretrained": "true" if self.pretrained else "false",
        }
        if self.crop_size:
            out["crop_size"] = str(self.crop_size)
            out["crop_objects"] = f"{self.crop_objects:g}"
        if self.stages:
            out["stages"] = ", ".join(
                f"{s.number}: {s.trains} {s.epochs} epochs = {s.steps} steps" for s in self.stages
            )
        return out


# --- Parsing -----------------------------------------------------------------


def _entry(entry_or_name: ModelEntry | str) -> ModelEntry:
    return entry_or_name if isinstance(entry_or_name, ModelEntry) else catalog_get(entry_or_name)


def _normalise_key(raw: str) -> str:
    return raw.strip().lstrip("-").strip().replace("-", "_").lower()


def _range_text(spec: ArgumentSpec) -> str:
    lo, hi = spec.minimum, spec.maximum
    if spec.kind == FLOAT:
        return f"a number from {lo:g} to {hi:g}"
    return f"a whole number from {int(lo)} to {int(hi)}"


def _parse_value(spec: ArgumentSpec, raw_key: str, raw: str, model: str) -> Any:
    value = raw.strip()
    if spec.kind == CHOICE:
        if value.lower() not in spec.choices:
            raise InvalidArgument(
                f"{raw_key}={value!r} is not one of {', '.join(spec.choices)}: use one of them"
            )
        return value.lower()
    if spec.kind == BOOL:
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InvalidArgument(f"{raw_key}={value!r} is not a yes/no value: use true or false")
    if spec.kind == INT_OR_AUTO and value.lower() == "auto":
        return "auto"
    if spec.kind in (INT, INT_OR_AUTO):
        if not _INT.fullmatch(value):
            extra = " or auto" if spec.kind == INT_OR_AUTO else ""
            raise InvalidArgument(
                f"{raw_key}={value!r} is not a whole number: use {_range_text(spec)}{extra}"
            )
        number: float = int(value)
    else:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise InvalidArgument(f"{raw_key}={value!r} is not a number: use {_range_text(spec)}")
    if (spec.minimum is not None and number < spec.minimum) or (
        spec.maximum is not None and number > spec.maximum
    ):
        raise InvalidArgument(
            f"{raw_key}={value} is out of range for {model}: use {_range_text(spec)}"
        )
    return number


def _unknown_key(entry: ModelEntry, key: str, raw_key: str) -> InvalidArgument:
    allowed = ", ".join(entry.argument_keys())
    if entry.staged and key in ("epochs", "num_steps"):
        return InvalidArgument(
            f"{entry.name} trains in stages: instead of {raw_key}, use "
            "--stage1_epochs, --stage2_epochs and --stage3_epochs (passes over the training set)"
        )
    if not entry.staged and key in STAGE_KEYS:
        return InvalidArgument(
            f"{raw_key} is only for maskrcnn; {entry.name} takes epochs (training steps). "
            f"Allowed for {entry.name}: {allowed}"
        )
    return InvalidArgument(f"unknown argument {raw_key!r} for {entry.name}; allowed: {allowed}")


def parse(
    text: str,
    model: ModelEntry | str,
    *,
    machine_gpus: int,
    requested_gpus: int = 0,
) -> Arguments:
    """Parse the seed's argument string for ``model`` on a machine with ``machine_gpus``.

    ``machine_gpus`` is the GPU count of the trainer pool (0 for a CPU pool,
    which trains on one device); ``requested_gpus`` is the request's own GPU
    count (0: not given).
    """
    entry = _entry(model)
    values: dict[str, Any] = {}
    seen_as: dict[str, str] = {}
    for piece in (text or "").split(";"):
        if not piece.strip():
            continue
        if "=" not in piece:
            raise InvalidArgument(
                f"argument {piece.strip()!r} has no value: write key=value, separated by ';'"
            )
        raw_key, raw_value = piece.split("=", 1)
        raw_key = raw_key.strip()
        key = _normalise_key(raw_key)
        if not key:
            raise InvalidArgument(f"argument {piece.strip()!r} has no key: write key=value")
        spec = entry.argument(key)
        if spec is None:
            raise _unknown_key(entry, key, raw_key)
        if spec.key in values:
            raise InvalidArgument(
                f"argument {spec.key} is given twice (as {seen_as[spec.key]!r} and "
                f"{raw_key!r}); keep one"
            )
        if not raw_value.strip():
            raise InvalidArgument(f"argument {raw_key!r} has an empty value")
        values[spec.key] = _parse_value(spec, raw_key, raw_value, entry.name)
        seen_as[spec.key] = raw_key

    num_clones = _num_clones(entry, values.get("num_clones"), machine_gpus, requested_gpus)
    _check_cross(entry, values, num_clones)
    given = frozenset(values)
    values.pop("num_clones", None)
    unknown = set(values) - _FIELDS
    if unknown:  # a catalog key without a field here: a programming error, not user input
        raise RuntimeError(f"arguments {sorted(unknown)} have no field in Arguments")
    return Arguments(
        model_type=entry.name, text=text or "", num_clones=num_clones, given=given, **values
    )


def _num_clones(
    entry: ModelEntry, given: int | None, machine_gpus: int, requested_gpus: int
) -> int:
    if machine_gpus < 0 or requested_gpus < 0:
        raise InvalidArgument("a GPU count cannot be negative")
    devices = max(1, machine_gpus)
    where = (
        "a CPU machine type, which trains on one device"
        if machine_gpus == 0
        else f"a machine type with {machine_gpus} GPU{'s' if machine_gpus != 1 else ''}"
    )
    if entry.min_gpus > 1 and machine_gpus < entry.min_gpus:
        raise InvalidArgument(
            f"{entry.name} needs {entry.min_gpus} or more GPUs and this is {where}: "
            f"pick a machine type with at least {entry.min_gpus} GPUs"
        )
    if requested_gpus and given is not None and requested_gpus != given:
        raise InvalidArgument(
            f"num_clones={given} contradicts the {requested_gpus} GPUs asked for: give one of them"
        )
    clones = given if given is not None else (requested_gpus or devices)
    if clones > devices:
        raise InvalidArgument(
            f"num_clones={clones} is more than this machine has: this is {where}; "
            f"use num_clones={devices} at most, or a machine type with more GPUs"
        )
    if clones < entry.min_gpus:
        raise InvalidArgument(
            f"{entry.name} needs {entry.min_gpus} or more GPUs: set num_clones to at least "
            f"{entry.min_gpus}"
        )
    return clones


def _check_cross(entry: ModelEntry, values: dict[str, Any], num_clones: int) -> None:
    batch = values.get("batch_size")
    if batch is not None and batch % num_clones:
        raise InvalidArgument(
            f"batch_size={batch} does not split over num_clones={num_clones}: batch_size is "
            f"images per step over all GPUs; use a multiple of {num_clones}, "
            f"e.g. {num_clones * max(1, batch // num_clones)}"
        )
    size = values.get("input_size")
    if size == "auto":
        size = None  # picked from the frames when the job runs (``resolve``)
    elif size is not None and size % entry.size_multiple:
        lower = max(entry.size_multiple, size - size % entry.size_multiple)
        raise InvalidArgument(
            f"input_size={size} is not a multiple of {entry.size_multiple} for {entry.name}: "
            f"use e.g. {lower} or {lower + entry.size_multiple}"
        )
    crop = values.get("crop_size")
    if crop is not None:
        if crop % entry.size_multiple:
            lower = max(entry.size_multiple, crop - crop % entry.size_multiple)
            raise InvalidArgument(
                f"crop_size={crop} is not a multiple of {entry.size_multiple} for {entry.name}: "
                f"use e.g. {lower} or {lower + entry.size_multiple}"
            )
        whole = size if size is not None else entry.input_size
        if values.get("input_size") != "auto" and crop >= whole:
            raise InvalidArgument(
                f"crop_size={crop} must be below input_size={whole}: crops are cut from frames "
                f"scaled to input_size; drop crop_size to train on whole frames"
            )
    if values.get("crop_objects") is not None and crop is None:
        raise InvalidArgument(
            "crop_objects places training crops and needs crop_size: add crop_size "
            "(e.g. crop_size=256 with input_size=auto) or drop crop_objects"
        )
    for k in (1, 2):
        step, lr = values.get(f"schedule_step_{k}"), values.get(f"schedule_lr_{k}")
        if (step is None) != (lr is None):
            missing = f"schedule_lr_{k}" if lr is None else f"schedule_step_{k}"
            raise InvalidArgument(
                f"schedule_step_{k} and schedule_lr_{k} go together: add {missing}"
            )
    step1, step2 = values.get("schedule_step_1"), values.get("schedule_step_2")
    if step2 is not None and step1 is None:
        raise InvalidArgument("schedule_step_2 needs schedule_step_1 (and schedule_lr_1) first")
    if step1 is not None and step2 is not None and step2 <= step1:
        raise InvalidArgument(f"schedule_step_2={step2} must come after schedule_step_1={step1}")
    if entry.staged:
        stages = [values.get(k, d) for k, d in zip(STAGE_KEYS, entry.stage_epochs, strict=True)]
        if not any(stages):
            raise InvalidArgument(
                "every stage has 0 epochs: give at least one of --stage1_epochs, "
                "--stage2_epochs, --stage3_epochs a value of 1 or more"
            )


# --- The plan ----------------------------------------------------------------


def auto_input_size(entry: ModelEntry, median_long_side: int) -> int:
    """``input_size=auto``: the frames' median longer side, to the nearest multiple."""
    step = entry.size_multiple
    nearest = int(median_long_side / step + 0.5) * step
    return max(step, min(nearest, max(step, AUTO_INPUT_MAX - AUTO_INPUT_MAX % step)))


def _input_size(args: Arguments, entry: ModelEntry, median_long_side: int) -> tuple[int, str, int]:
    """(input size, how it was chosen, crop size or 0)."""
    crop = args.crop_size or 0
    if args.input_size is None:
        return entry.input_size, "default", crop
    if args.input_size != "auto":
        return int(args.input_size), "user", crop
    if median_long_side <= 0:
        raise InvalidArgument(
            "input_size=auto needs the training frames' sizes, and this dataset's manifest "
            "has none (exported by an older exporter): export the task again, or give "
            "input_size a number"
        )
    size = auto_input_size(entry, median_long_side)
    source = f"auto from the frames' median longer side {median_long_side} px"
    if crop and crop >= size:
        source += f"; crop_size={crop} not below it, so whole frames (no crop_objects)"
        crop = 0
    return size, source, crop


def resolve(
    args: Arguments, model: ModelEntry | str, dataset_images: int, *, median_long_side: int = 0
) -> Plan:
    """The training plan for ``args`` on a training split of ``dataset_images`` images.

    ``median_long_side``: the training frames' median longer side in pixels (the
    dataset manifest's), which ``input_size=auto`` needs.
    """
    entry = _entry(model)
    if args.model_type != entry.name:
        raise ValueError(f"arguments parsed for {args.model_type}, resolved for {entry.name}")
    input_size, size_source, crop = _input_size(args, entry, median_long_side)
    batch = args.batch_size if args.batch_size is not None else entry.default_batch(args.num_clones)
    if args.initial_learning_rate is not None:
        lr = args.initial_learning_rate
    elif entry.staged:
        lr = entry.learning_rate * batch  # Model Garden's linear scaling from 1 image
    else:
        lr = entry.learning_rate

    stages: tuple[Stage, ...] = ()
    if entry.staged:
        if dataset_images < 1:
            raise InvalidArgument(
                f"{entry.name} counts its stages in passes over the training "
                "set, and the training split has no images"
            )
        per_epoch = math.ceil(dataset_images / batch)
        trains = ("heads", "stage4+", "all")
        factors = (1.0, 1.0, entry.last_stage_lr_factor)
        built = []
        for i, key in enumerate(STAGE_KEYS):
            epochs = getattr(args, key)
            epochs = entry.stage_epochs[i] if epochs is None else epochs
            built.append(Stage(i + 1, trains[i], epochs, epochs * per_epoch, factors[i]))
        stages = tuple(built)
        steps = sum(s.steps for s in stages)
        source = f"stages over {dataset_images} images"
    elif args.epochs == "auto":
        if dataset_images < 1:
            raise InvalidArgument(
                "epochs=auto needs training images, and the training split has none"
            )
        steps = max(1, math.ceil(dataset_images * entry.auto_steps_factor / batch))
        source = f"auto from {dataset_images} images"
    elif args.epochs is not None:
        steps, source = int(args.epochs), "user"
    else:
        steps, source = entry.steps, "default"

    warmup = args.warmup_steps if args.warmup_steps is not None else min(500, steps // 10)
    if warmup >= steps and warmup > 0:
        raise InvalidArgument(
            f"warmup_steps={warmup} leaves no training after warm-up in {steps} steps: "
            f"use fewer than {steps}"
        )
    schedule: list[tuple[int, float]] = []
    for k in (1, 2):
        step = getattr(args, f"schedule_step_{k}")
        if step is None:
            continue
        if step >= steps:
            raise InvalidArgument(
                f"schedule_step_{k}={step} is not before the end of training ({steps} steps): "
                f"use a step below {steps}, or more epochs"
            )
        if step <= warmup:
            raise InvalidArgument(
                f"schedule_step_{k}={step} falls inside the {warmup} warm-up steps: use a later "
                "step or a smaller warmup_steps"
            )
        schedule.append((step, float(getattr(args, f"schedule_lr_{k}"))))
    if stages and schedule:
        raise InvalidArgument("maskrcnn sets its learning rate by stage; drop schedule_* keys")

    return Plan(
        model_type=entry.name,
        num_clones=args.num_clones,
        batch_size=batch,
        learning_rate=float(lr),
        steps=steps,
        steps_source=source,
        warmup_steps=warmup,
        input_size=input_size,
        input_size_source=size_source,
        checkpoint_every=args.checkpoint_every,
        evaluate=True if args.eval is None else bool(args.eval),
        pretrained=True if args.pretrained is None else bool(args.pretrained),
        optimizer=args.optimizer or "sgd",
        schedule=tuple(schedule),
        stages=stages,
        first_stage_max_proposals=(
            (args.first_stage_max_proposals or entry.proposals)
            if entry.family != "retinanet"
            else 0
        ),
        second_stage_batch_size=(
            (args.second_stage_batch_size or 512) if entry.family != "retinanet" else 0
        ),
        num_sampled_masks=(args.num_sampled_masks or 128) if entry.has_masks else 0,
        crop_size=crop,
        crop_objects=(
            (DEFAULT_CROP_OBJECTS if args.crop_objects is None else args.crop_objects)
            if crop
            else 0.0
        ),
        train_images=dataset_images,
        user_arguments=args.as_dict(),
    )


# --- Base models --------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelRef:
    """An earlier model of the same namespace; version 0: its newest ready version."""

    namespace: str
    name: str
    version: int = 0

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f"/{self.version}" if self.version else "")


def base_model_ref(
    namespace: str, name: str, version: int = 0, *, ref_namespace: str = ""
) -> BaseModelRef | None:
    """Check a base model reference for a job of ``namespace``; None when ``name`` is empty.

    ``ref_namespace`` is the namespace the reference names (empty: the job's).
    A model of another namespace is refused with ``InvalidArgument``.
    """
    if not name:
        if ref_namespace or version:
            raise InvalidArgument("a base model needs a name")
        return None
    check_name(namespace, "namespace")
    if ref_namespace and ref_namespace != namespace:
        raise InvalidArgument(
            f"base model {ref_namespace}/{name} is in namespace {ref_namespace!r}, and this job "
            f"is in {namespace!r}: a base model must be an earlier model of the same namespace"
        )
    check_name(name, "base model name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidArgument(f"base model version {version!r} must be a whole number (0: newest)")
    return BaseModelRef(namespace, name, version)


def parse_base_model(text: str, namespace: str) -> BaseModelRef | None:
    """``"<name>"``, ``"<name>/<version>"`` or ``"<namespace>/<name>/<version>"``."""
    text = (text or "").strip().strip("/")
    if not text:
        return None
    parts = text.split("/")
    ref_ns, version = "", 0
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2 and _INT.fullmatch(parts[1]):
        name, version = parts[0], int(parts[1])
    elif len(parts) == 2:
        ref_ns, name = parts
    elif len(parts) == 3 and _INT.fullmatch(parts[2]):
        ref_ns, name, version = parts[0], parts[1], int(parts[2])
    else:
        raise InvalidArgument(
            f"base model {text!r} is not understood: write <name>, <name>/<version> or "
            "<namespace>/<name>/<version>"
        )
    return base_model_ref(namespace, name, version, ref_namespace=ref_ns)


def base_model_from_proto(ref: Any, namespace: str) -> BaseModelRef | None:
    """The same check for a ``preannotate.v1.ModelRef`` (unset: None)."""
    if ref is None:
        return None
    return base_model_ref(namespace, ref.name, int(ref.version), ref_namespace=ref.namespace)
