"""The gateway's Prometheus metrics (served on its /metrics with the platform's).

Per model (labels ``namespace``, ``model``; the version is a gauge's value, not
a label, so the series do not grow with every version): the promoted version as
the gateway last read the promotion log (after PromoteModel, RollbackModel,
ListModels, and choosing the model for a new task), and the corrections people
made to its pre-annotations (``services.gateway.corrections``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from preannotate.corrections import Corrections
from preannotate.telemetry.promotion import PromotionFigures

MODEL = ["namespace", "model"]

PROMOTIONS = Counter(
    "preannotate_gateway_promotions_total",
    "Versions promoted or rolled back by a person (PromoteModel, RollbackModel)",
    ["action"],
)
# At 0 from the start: increase() needs a sample before a process's first overrule.
for _action in ("promote", "rollback"):
    PROMOTIONS.labels(_action)
PROMOTED_VERSION = Gauge(
    "preannotate_gateway_promoted_version",
    "The model's promoted version, as the gateway last read its promotion log (0: none)",
    MODEL,
)
PROMOTED_MAP = Gauge(
    "preannotate_gateway_promoted_map",
    "mAP@0.5 of the promoted version on the model's frozen evaluation set, as the gate "
    "judged it (NaN: not recorded)",
    MODEL,
)
CORRECTIONS = Counter(
    "preannotate_gateway_corrections_total",
    "Corrections people made to pre-annotations, by kind (deleted, drawn, moved, "
    "relabelled), counted when a pre-annotated CVAT job completes",
    [*MODEL, "kind"],
)
CORRECTED_OBJECTS = Counter(
    "preannotate_gateway_corrected_objects_total",
    "Objects (shapes) the measured CVAT jobs hold at completion: the corrections' "
    "denominator (corrections per 100 objects)",
    MODEL,
)
CORRECTED_FRAMES = Counter(
    "preannotate_gateway_corrected_frames_total",
    "Frames of the measured CVAT jobs",
    MODEL,
)
CORRECTIONS_VERSION = Gauge(
    "preannotate_gateway_corrections_version",
    "The version whose pre-annotations were measured last",
    MODEL,
)
CORRECTIONS_PER_100_OBJECTS = Gauge(
    "preannotate_gateway_corrections_per_100_objects",
    "Corrections per 100 objects over every measured job of the version measured last "
    "(preannotate_gateway_corrections_version)",
    MODEL,
)
KINDS = ("deleted", "drawn", "moved", "relabelled")


def observe_promotion(namespace: str, name: str, figures: PromotionFigures) -> None:
    PROMOTED_VERSION.labels(namespace, name).set(figures.promoted_version)
    PROMOTED_MAP.labels(namespace, name).set(figures.promoted_map)


def observe_corrections(
    namespace: str, name: str, version: int, measured: Corrections, version_total: Corrections
) -> None:
    """Count one newly measured job (``measured``); ``version_total``: all of the
    version's measured jobs, this one included."""
    for kind in KINDS:
        CORRECTIONS.labels(namespace, name, kind).inc(getattr(measured, kind))
    CORRECTED_OBJECTS.labels(namespace, name).inc(measured.final)
    CORRECTED_FRAMES.labels(namespace, name).inc(measured.frames)
    CORRECTIONS_VERSION.labels(namespace, name).set(version)
    CORRECTIONS_PER_100_OBJECTS.labels(namespace, name).set(version_total.per_100_objects)
