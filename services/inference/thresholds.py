"""A run's score thresholds: the run's own, and optional ones per label.

A model is often good at one label and bad at another; one threshold for all
either drowns the good label's boxes in the bad one's, or drops the good ones.
``label_thresholds`` (``AnnotateTaskRequest``, ``AnnotationRequested``, the
gateway policy's ``label_thresholds``) sets a label's own threshold; the other
labels keep the run's. The model runs down to the lowest of them (lower still
where a target wrapper asks: ``targets.tracked.detection_floor``), and each
detection is then kept against its own label's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from preannotate.errors import InvalidArgument


@dataclass(frozen=True)
class Thresholds:
    """The run's threshold (``default``) and the labels' own (``labels``)."""

    default: float
    labels: Mapping[str, float] = field(default_factory=dict)

    def of(self, label: str) -> float:
        return self.labels.get(label, self.default)

    def lowest(self) -> float:
        return min([self.default, *self.labels.values()])

    def key(self) -> str:
        """What the run was asked, for its ledger: ``0.5`` or ``0.5;cat=0.7;dog=0.3``."""
        return ";".join([str(self.default), *(f"{k}={v}" for k, v in sorted(self.labels.items()))])


def check(default: float, labels: Mapping[str, float], classes: Iterable[str]) -> Thresholds:
    """``Thresholds`` after checking every value is in 0..1 and every label is one of
    the model's ``classes`` (a misspelt label would otherwise be ignored)."""
    for name, value in [("threshold", default), *(
        (f"label_thresholds[{k!r}]", v) for k, v in sorted(labels.items())
    )]:  # fmt: skip
        if not 0 <= value <= 1:
            raise InvalidArgument(f"{name} {value} is not in 0..1")
    known = list(classes)
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise InvalidArgument(
            f"label_thresholds names {unknown}, which the model does not know; its labels: "
            + ", ".join(known)
        )
    return Thresholds(default, dict(labels))
