"""The model catalog: every model a user can train, under the seed's names.

Declarative and free of TensorFlow (the gateway lists and validates with it):
each ``ModelEntry`` says what the model is built as, which TF Model Garden
experiment and backbone the trainer builds it from, the seed's defaults, and
the argument keys a user may set (``ArgumentSpec``; parsed by
``preannotate.arguments``). The builders that turn an entry into a Model
Garden config live in the trainer, one module per family
(``services/trainer/configs/<family>.py``); the converter exports every
family with one module (``services/converter/module.py``).

The catalog is a registry that refuses duplicates and answers a failed lookup
with what exists. ``default_catalog()`` fills it from the one list in
``_entries()`` below; nothing registers itself on import. To add a model, see
the checklist in docs/adding-a-model.md (an entry here, a builder for its
family in the trainer, and for a new family its export in the converter).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from preannotate.errors import AlreadyExists, InvalidArgument

Family = Literal["retinanet", "fasterrcnn", "maskrcnn"]

# Argument kinds, as shown to users (ListModelTypes) and parsed by arguments.py.
INT = "int"
FLOAT = "float"
BOOL = "bool"
INT_OR_AUTO = "int or auto"
CHOICE = "choice"
KINDS = (INT, FLOAT, BOOL, INT_OR_AUTO, CHOICE)


@dataclass(frozen=True)
class ArgumentSpec:
    """One key of the argument string: its kind, default (as shown) and limits."""

    key: str
    kind: str
    default: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    #: Other spellings the seed accepted (``num_steps`` for ``epochs``).
    aliases: tuple[str, ...] = ()
    #: The values a ``CHOICE`` key takes, lower case.
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"argument {self.key!r}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == CHOICE) != bool(self.choices):
            raise ValueError(f"argument {self.key!r}: choices go with kind {CHOICE!r} only")

    def to_proto(self):
        from preannotate.v1 import training_pb2

        return training_pb2.ArgumentSpec(
            key=self.key, kind=self.kind, default_value=self.default, help=self.help
        )


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalog."""

    name: str
    #: One line: what it is built as.
    built_as: str
    #: The Model Garden model family: the trainer's config builder
    #: (``services/trainer/configs/<family>.py``) and the export's branch in the converter.
    family: Family
    #: The TF Model Garden (official.vision) experiment it starts from.
    experiment: str
    #: Backbone id understood by the trainer's builders and preannotate.vision:
    #: mobilenet_v2, resnet50, resnet101, inception_resnet_v2, nasnet_large.
    backbone: str
    #: Images per training step over all GPUs; per GPU when ``batch_per_gpu``.
    batch_size: int
    batch_per_gpu: bool
    learning_rate: float
    #: Training steps when "epochs" is not given (0: by Mask R-CNN stages).
    steps: int
    #: Square input size in pixels; a multiple of ``size_multiple``.
    input_size: int
    size_multiple: int
    min_gpus: int
    has_masks: bool
    #: "epochs=auto": steps = images / batch_size x this factor (0: not offered).
    auto_steps_factor: int
    when_to_pick: str
    #: RPN proposals kept per image (R-CNNs only).
    proposals: int = 0
    #: Mask R-CNN stage epochs (heads; ResNet stage 4 and up; all layers).
    stage_epochs: tuple[int, int, int] | None = None
    #: The learning rate of the last Mask R-CNN stage, as a fraction of the first.
    last_stage_lr_factor: float = 0.1
    arguments: tuple[ArgumentSpec, ...] = field(default_factory=tuple)

    @property
    def staged(self) -> bool:
        return self.stage_epochs is not None

    def argument(self, key: str) -> ArgumentSpec | None:
        for spec in self.arguments:
            if spec.key == key or key in spec.aliases:
                return spec
        return None

    def argument_keys(self) -> list[str]:
        return [spec.key for spec in self.arguments]

    def default_batch(self, num_clones: int) -> int:
        return self.batch_size * num_clones if self.batch_per_gpu else self.batch_size

    def to_proto(self):
        """The gateway's ``preannotate.v1.ModelType``."""
        from preannotate.v1 import training_pb2

        return training_pb2.ModelType(
            name=self.name,
            built_as=self.built_as,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            steps=self.steps,
            input_size=self.input_size,
            when_to_pick=self.when_to_pick,
            min_gpus=self.min_gpus,
            has_masks=self.has_masks,
            arguments=[spec.to_proto() for spec in self.arguments],
        )


class Catalog:
    """A registry of ``ModelEntry`` by name: no duplicates, helpful misses."""

    def __init__(self, entries: list[ModelEntry] | tuple[ModelEntry, ...] = ()) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: ModelEntry) -> ModelEntry:
        if entry.name in self._entries:
            raise AlreadyExists(f"model type {entry.name!r} is already in the catalog")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise InvalidArgument(
                f"unknown model type {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


# --- The argument keys ------------------------------------------------------

MAX_STEPS = 10_000_000
#: The largest input size "input_size=auto" picks.
AUTO_INPUT_MAX = 1024


def _common_arguments(
    *, steps: str, batch: str, lr: str, input_size: int, multiple: int, auto: bool
) -> tuple[ArgumentSpec, ...]:
    epochs_help = "training steps (the seed calls them epochs)" + (
        "; 'auto': images / batch_size x the model's factor" if auto else ""
    )
    return (
        ArgumentSpec(
            "epochs",
            INT_OR_AUTO if auto else INT,
            steps,
            epochs_help,
            minimum=1,
            maximum=MAX_STEPS,
            aliases=("num_steps",),
        ),
        ArgumentSpec(
            "batch_size",
            INT,
            batch,
            "images per training step over all GPUs (a multiple of num_clones)",
            minimum=1,
            maximum=4096,
        ),
        ArgumentSpec(
            "initial_learning_rate",
            FLOAT,
            lr,
            "learning rate after warm-up",
            minimum=1e-8,
            maximum=10.0,
            aliases=("learning_rate",),
        ),
        ArgumentSpec(
            "num_clones",
            INT,
            "the machine's GPUs (1 on a CPU machine)",
            "GPUs to train on, at most the machine's",
            minimum=1,
            maximum=64,
        ),
        ArgumentSpec(
            "warmup_steps",
            INT,
            "min(500, steps / 10)",
            "steps of linear warm-up from 0 to the learning rate",
            minimum=0,
            maximum=MAX_STEPS,
        ),
        ArgumentSpec(
            "input_size",
            INT_OR_AUTO,
            str(input_size),
            f"square input size in pixels, a multiple of {multiple}; 'auto': the training "
            f"frames' median longer side, rounded to a multiple of {multiple}, at most "
            f"{AUTO_INPUT_MAX}",
            minimum=multiple,
            maximum=2048,
        ),
        ArgumentSpec(
            "checkpoint_every",
            INT,
            "the trainer's setting (500)",
            "save a checkpoint to storage every this many steps (and at the end)",
            minimum=1,
            maximum=MAX_STEPS,
        ),
        ArgumentSpec(
            "eval",
            BOOL,
            "true",
            "evaluate on the validation split at the end (COCO mAP); false skips it",
        ),
        ArgumentSpec(
            "pretrained",
            BOOL,
            "true",
            "start from the model type's published weights; false: random start",
        ),
        ArgumentSpec(
            "optimizer",
            CHOICE,
            "sgd",
            "sgd (momentum 0.9) or adam; from a random start adam learns in fewer steps "
            "(docs/benchmarks.md); adam takes a learning rate about 10 times smaller",
            choices=("sgd", "adam"),
        ),
    )


_SCHEDULE = (
    ArgumentSpec(
        "schedule_step_1",
        INT,
        "none",
        "step at which the learning rate becomes schedule_lr_1 (with schedule_lr_1)",
        minimum=1,
        maximum=MAX_STEPS,
    ),
    ArgumentSpec("schedule_lr_1", FLOAT, "none", "learning rate from schedule_step_1", 0.0, 10.0),
    ArgumentSpec(
        "schedule_step_2",
        INT,
        "none",
        "step at which the learning rate becomes schedule_lr_2 (after schedule_step_1)",
        minimum=1,
        maximum=MAX_STEPS,
    ),
    ArgumentSpec("schedule_lr_2", FLOAT, "none", "learning rate from schedule_step_2", 0.0, 10.0),
)


#: The share of training crops centred on objects when crop_size is given and
#: crop_objects is not (docs/benchmarks.md, "Crops centred on objects").
DEFAULT_CROP_OBJECTS = 0.5

_CROP = (
    ArgumentSpec(
        "crop_size",
        INT,
        "none (whole frames)",
        "train on random crops of this size cut from frames scaled to input_size: steps "
        "cost as at crop_size while objects keep the scale the model sees at input_size "
        "(small objects in large frames); a multiple of 128, below input_size",
        minimum=128,
        maximum=2048,
    ),
    ArgumentSpec(
        "crop_objects",
        FLOAT,
        f"{DEFAULT_CROP_OBJECTS:g} with crop_size",
        "share of the training crops centred near one of the frame's objects (the rest "
        "fall anywhere): more objects per step; needs crop_size",
        minimum=0.0,
        maximum=1.0,
    ),
)


def _rcnn_arguments(proposals: int) -> tuple[ArgumentSpec, ...]:
    return (
        ArgumentSpec(
            "first_stage_max_proposals",
            INT,
            str(proposals),
            "RPN proposals kept per image (fewer: faster, may miss objects)",
            minimum=1,
            maximum=5000,
        ),
        ArgumentSpec(
            "second_stage_batch_size",
            INT,
            "512",
            "proposals sampled per image to train the box head",
            minimum=1,
            maximum=4096,
        ),
    )


_MASK_ARGUMENTS = (
    ArgumentSpec(
        "num_sampled_masks",
        INT,
        "128",
        "proposals sampled per image to train the mask head",
        minimum=1,
        maximum=1024,
    ),
)


def _stage_arguments(epochs: tuple[int, int, int]) -> tuple[ArgumentSpec, ...]:
    what = ("heads only", "ResNet stage 4 and up", "all layers at a tenth of the learning rate")
    return tuple(
        ArgumentSpec(
            f"stage{i + 1}_epochs",
            INT,
            str(epochs[i]),
            f"passes over the training set in stage {i + 1}: {what[i]}",
            minimum=0,
            maximum=100_000,
        )
        for i in range(3)
    )


# --- The entries --------------------------------------------------------------

_SSD_SIZE = 256  # Model Garden's RetinaNet needs a multiple of 2^7 (levels 3..7).
_RCNN_SIZE = 640  # R-CNN levels 2..6: a multiple of 2^6.


def _faster_rcnn(
    name: str,
    built_as: str,
    backbone: str,
    when_to_pick: str,
    *,
    proposals: int = 1000,
    min_gpus: int = 1,
) -> ModelEntry:
    return ModelEntry(
        name=name,
        built_as=built_as,
        family="fasterrcnn",
        experiment="fasterrcnn_resnetfpn_coco",
        backbone=backbone,
        batch_size=1,
        batch_per_gpu=True,
        learning_rate=0.0003,
        steps=10000,
        input_size=_RCNN_SIZE,
        size_multiple=64,
        min_gpus=min_gpus,
        has_masks=False,
        auto_steps_factor=500,
        when_to_pick=when_to_pick,
        proposals=proposals,
        arguments=_common_arguments(
            steps="10000",
            batch="1 per GPU",
            lr="0.0003",
            input_size=_RCNN_SIZE,
            multiple=64,
            auto=True,
        )
        + _SCHEDULE
        + _rcnn_arguments(proposals),
    )


def _entries() -> list[ModelEntry]:
    """Every model of the catalog, in the order ListModelTypes shows them."""
    ssd = ModelEntry(
        name="ssd-mobilenet-v2-coco",
        built_as="single-stage detector (RetinaNet head, separable FPN), MobileNetV2 backbone",
        family="retinanet",
        experiment="retinanet_mobile_coco",
        backbone="mobilenet_v2",
        batch_size=24,
        batch_per_gpu=False,
        learning_rate=0.004,
        steps=15000,
        input_size=_SSD_SIZE,
        size_multiple=128,
        min_gpus=1,
        has_masks=False,
        auto_steps_factor=1000,
        when_to_pick="fastest to train and to run; good for large, distinct objects; "
        "the one to try first and the one that trains on a CPU",
        arguments=_common_arguments(
            steps="15000",
            batch="24",
            lr="0.004",
            input_size=_SSD_SIZE,
            multiple=128,
            auto=True,
        )
        + _SCHEDULE
        + _CROP,
    )
    mask_epochs = (1, 2, 3)
    maskrcnn = ModelEntry(
        name="maskrcnn",
        built_as="Mask R-CNN, ResNet-50 FPN; trains in three stages: heads, "
        "ResNet stage 4 and up, all layers",
        family="maskrcnn",
        experiment="maskrcnn_resnetfpn_coco",
        backbone="resnet50",
        batch_size=1,
        batch_per_gpu=True,
        # Model Garden's recipe: 0.12 for 64 images per step, scaled to 1 image.
        learning_rate=0.12 / 64,
        steps=0,
        input_size=_RCNN_SIZE,
        size_multiple=64,
        min_gpus=1,
        has_masks=True,
        auto_steps_factor=0,
        when_to_pick="when you need instance masks (polygons), not only boxes; slowest to train",
        proposals=1000,
        stage_epochs=mask_epochs,
        arguments=tuple(
            spec
            for spec in _common_arguments(
                steps="by stage",
                batch="1 per GPU",
                lr="0.001875 x batch_size",
                input_size=_RCNN_SIZE,
                multiple=64,
                auto=False,
            )
            if spec.key != "epochs"
        )
        + _stage_arguments(mask_epochs)
        + _rcnn_arguments(1000)
        + _MASK_ARGUMENTS,
    )
    return [
        ssd,
        _faster_rcnn(
            "frcnn-res50-coco",
            "Faster R-CNN, ResNet-50 FPN",
            "resnet50",
            "more accurate than SSD on small or crowded objects; a good default two-stage model",
        ),
        _faster_rcnn(
            "frcnn-res50-lowp",
            "Faster R-CNN, ResNet-50 FPN, few proposals (100)",
            "resnet50",
            "like frcnn-res50-coco but faster at inference, for scenes with few objects",
            proposals=100,
        ),
        _faster_rcnn(
            "frcnn-res101-coco",
            "Faster R-CNN, ResNet-101 FPN",
            "resnet101",
            "more capacity than ResNet-50 for many classes or hard objects; slower",
        ),
        _faster_rcnn(
            "frcnn-inc-resv2-atr-coco",
            "Faster R-CNN, Inception-ResNet-v2 backbone (FPN)",
            "inception_resnet_v2",
            "high accuracy on hard, varied objects when time and GPU memory allow",
        ),
        _faster_rcnn(
            "frcnn-nas-coco",
            "Faster R-CNN, NASNet-A Large backbone (FPN); needs 2 or more GPUs",
            "nasnet_large",
            "the most accurate and the slowest; only on machines with 2 or more GPUs",
            min_gpus=2,
        ),
        maskrcnn,
    ]


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The product's catalog, built once from ``_entries()``."""
    return Catalog(_entries())


def get(name: str) -> ModelEntry:
    """The entry called ``name`` in the default catalog; ``InvalidArgument`` lists the names."""
    return default_catalog().get(name)
