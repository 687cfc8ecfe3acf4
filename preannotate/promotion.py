"""Which version of a model serves: the promotion gate, promote, rollback, and their log.

A model (a name in a namespace) has one promoted version: the one the Nuclio
function list, new-task pre-annotation and ``annotate`` without a version use.
The state is a log in storage, ``<ns>/models/<name>/promotion/<seq>.json``
(``preannotate.layout``), one entry per decision, each created once with
``put_if_absent``: the store offers a conditional create and no conditional
update, so a change is the next entry, and of two writers of one entry one
wins and the other reads the log again and retries. Every entry carries the
state after it (``promoted``, and ``previous``: the versions promoted before,
oldest first, which ``rollback`` returns to), who made it (``by``) and why.

The gate (``decide``, a pure function; ``gate`` applies it once per version):
the first version is promoted; a later one is promoted when its mAP@0.5 on the
model's frozen evaluation set is not lower than the promoted one's minus
``tolerance``, otherwise it stays a candidate with the reason. A version not
measured on the set the promoted one was measured on cannot be compared: it
stays a candidate, unless the promoted one was never measured on the current
set (then it is promoted, and the log says why). ``promote`` and ``rollback``
are a person's overrule.

Blocking, like ``Storage``: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from preannotate import layout, modelmetrics
from preannotate.errors import FailedPrecondition, NotFound, Unavailable
from preannotate.storage import Storage

#: The metric the gate compares.
METRIC = modelmetrics.MAP_50
DEFAULT_TOLERANCE = 0.02
#: Actions of log entries.
GATE_PROMOTED = "gate-promoted"
GATE_REFUSED = "gate-refused"
PROMOTED = "promoted"
ROLLED_BACK = "rolled-back"
#: Version statuses, as ``preannotate models`` shows them.
STATUS_PROMOTED = "promoted"
STATUS_CANDIDATE = "candidate"
STATUS_PREVIOUS = "previous"
_ATTEMPTS = 20


@dataclass(frozen=True)
class Measured:
    """A version's metrics and the evaluation set they were measured on ("" for none)."""

    version: int
    metrics: Mapping[str, float]
    evaluation_set: str = ""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: Measured, promoted: Measured | None, tolerance: float) -> Decision:
    """The gate: promote ``candidate`` over ``promoted`` (None: there is none yet)?"""
    if tolerance < 0:
        raise ValueError(f"tolerance {tolerance} is below 0")
    if promoted is None:
        return Decision(True, "the first version of the model")
    score = candidate.metrics.get(METRIC)
    if not candidate.evaluation_set or score is None:
        return Decision(
            False,
            f"not measured on the model's evaluation set (no {METRIC}; was evaluation off?)",
        )
    if promoted.evaluation_set != candidate.evaluation_set or METRIC not in promoted.metrics:
        return Decision(
            True,
            f"{METRIC} {score:.4f}; the promoted version {promoted.version} was not measured "
            f"on evaluation set {candidate.evaluation_set}",
        )
    best = promoted.metrics[METRIC]
    floor = best - tolerance
    if score < floor:
        return Decision(
            False,
            f"{METRIC} {score:.4f} is below version {promoted.version}'s {best:.4f} "
            f"minus the tolerance {tolerance:g}",
        )
    return Decision(
        True,
        f"{METRIC} {score:.4f}, not below version {promoted.version}'s {best:.4f} "
        f"minus the tolerance {tolerance:g}",
    )


@dataclass(frozen=True)
class PromotionState:
    """The model's promotion log and the state after its last entry."""

    namespace: str
    name: str
    entries: tuple[dict[str, Any], ...] = ()
    promoted: int = 0
    previous: tuple[int, ...] = field(default=())

    @classmethod
    def from_log(cls, namespace: str, name: str, entries: list[dict[str, Any]]) -> PromotionState:
        if not entries:
            return cls(namespace, name)
        last = entries[-1]
        return cls(
            namespace,
            name,
            tuple(entries),
            int(last.get("promoted", 0)),
            tuple(int(v) for v in last.get("previous", [])),
        )

    @property
    def seq(self) -> int:
        return int(self.entries[-1]["seq"]) if self.entries else 0

    def serving_order(self) -> list[int]:
        """The versions to serve, best first: the promoted one, then those before it
        (newest first), for when the promoted one is not servable yet."""
        return ([self.promoted] if self.promoted else []) + list(reversed(self.previous))

    def pinned(self) -> set[int]:
        """The versions that must stay loaded whatever their age: the promoted one and
        the one promoted before it (what ``rollback`` returns to). TF Serving's
        newest-N rule (``PREANNOTATE_TFSERVING_KEEP_VERSIONS``) keeps these too."""
        return set(self.serving_order()[:2])

    def serving_version(self, servable: Collection[int]) -> int | None:
        """The version to serve among ``servable`` ones: the promoted one, else the one
        promoted before it that is servable; a model without a promotion log (trained
        before the gate) serves its newest. None when nothing fits."""
        if not self.entries:
            return max(servable, default=None)
        return next((v for v in self.serving_order() if v in servable), None)

    def gate_entry(self, version: int) -> dict[str, Any] | None:
        for entry in self.entries:
            if entry.get("version") == version and entry.get("action") in (
                GATE_PROMOTED,
                GATE_REFUSED,
            ):
                return entry
        return None

    def status(self, version: int) -> tuple[str, str]:
        """(status, reason) of ``version``: promoted, previous or candidate ("" before any
        decision: a version trained before the gate existed)."""
        last = None
        for entry in self.entries:
            if entry.get("version") == version or (
                entry.get("action") == ROLLED_BACK and entry.get("from_version") == version
            ):
                last = entry
        if version == self.promoted:
            return STATUS_PROMOTED, _said(last)
        if version in self.previous:
            return STATUS_PREVIOUS, "promoted before the current version"
        if last is None:
            return "", ""
        return STATUS_CANDIDATE, _said(last)


def _said(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    by = entry.get("by", "")
    reason = entry.get("reason", "")
    action = entry.get("action", "")
    return f"{action} by {by}: {reason}" if by else f"{action}: {reason}"


def read(storage: Storage, namespace: str, name: str) -> PromotionState:
    return PromotionState.from_log(
        namespace, name, layout.read_promotion_log(storage, namespace, name)
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _append(
    storage: Storage,
    namespace: str,
    name: str,
    change: Callable[[PromotionState], dict[str, Any] | None],
) -> tuple[PromotionState, dict[str, Any] | None]:
    """Apply ``change`` to the newest state and log its entry; retried when another
    writer took the entry's number. ``change`` returns None when nothing is to log."""
    for _ in range(_ATTEMPTS):
        state = read(storage, namespace, name)
        entry = change(state)
        if entry is None:
            return state, None
        entry = {"at": _now(), **entry}
        if layout.append_promotion(storage, namespace, name, state.seq + 1, entry):
            return read(storage, namespace, name), {**entry, "seq": state.seq + 1}
    raise Unavailable(f"the promotion log of {namespace}/{name} kept changing; try again")


def _promoted_to(state: PromotionState, version: int) -> dict[str, Any]:
    previous = [v for v in state.previous if v != version]
    if state.promoted and state.promoted != version:
        previous.append(state.promoted)
    return {"promoted": version, "previous": previous}


def gate(
    storage: Storage,
    candidate: Measured,
    *,
    namespace: str,
    name: str,
    tolerance: float,
    measured: Callable[[int], Measured | None],
) -> tuple[Decision, bool]:
    """Decide ``candidate`` once and log it; (decision, whether logged now).

    ``measured(version)`` gives the promoted version's metrics (None when it has
    none). A version decided before (a redelivered job) keeps its decision.
    """
    holder: list[Decision] = []

    def change(state: PromotionState) -> dict[str, Any] | None:
        holder.clear()
        earlier = state.gate_entry(candidate.version)
        if earlier is not None:
            holder.append(Decision(earlier["action"] == GATE_PROMOTED, earlier.get("reason", "")))
            return None
        promoted = measured(state.promoted) if state.promoted else None
        if state.promoted and promoted is None:
            promoted = Measured(state.promoted, {}, "")
        decision = decide(candidate, promoted, tolerance)
        holder.append(decision)
        entry: dict[str, Any] = {
            "action": GATE_PROMOTED if decision.promote else GATE_REFUSED,
            "version": candidate.version,
            "by": "gate",
            "reason": decision.reason,
            "metrics": dict(candidate.metrics),
            "evaluation_set": candidate.evaluation_set,
            "tolerance": tolerance,
        }
        if promoted is not None and METRIC in promoted.metrics:
            entry["compared_with"] = {
                "version": promoted.version,
                METRIC: promoted.metrics[METRIC],
                "evaluation_set": promoted.evaluation_set,
            }
        if decision.promote:
            entry.update(_promoted_to(state, candidate.version))
        else:
            entry.update(promoted=state.promoted, previous=list(state.previous))
        return entry

    _, entry = _append(storage, namespace, name, change)
    return holder[0], entry is not None


def promote(
    storage: Storage, namespace: str, name: str, version: int, *, by: str, reason: str = ""
) -> PromotionState:
    """Make ``version`` (a finished version) the promoted one; logged with ``by``."""
    finished = layout.finished_versions(storage, namespace, name)
    if version not in finished:
        raise NotFound(
            f"model {namespace}/{name} has no finished version {version}; finished: "
            + (", ".join(map(str, finished)) if finished else "none")
        )

    def change(state: PromotionState) -> dict[str, Any] | None:
        if state.promoted == version:
            return None  # already: nothing to log
        return {
            "action": PROMOTED,
            "version": version,
            "from_version": state.promoted,
            "by": by,
            "reason": reason or "promoted by hand",
            **_promoted_to(state, version),
        }

    state, _ = _append(storage, namespace, name, change)
    return state


def rollback(
    storage: Storage, namespace: str, name: str, *, by: str, reason: str = ""
) -> PromotionState:
    """Return to the version promoted before the current one; logged with ``by``."""

    def change(state: PromotionState) -> dict[str, Any] | None:
        if not state.promoted:
            raise FailedPrecondition(
                f"model {namespace}/{name} has no promoted version: nothing to roll back"
            )
        if not state.previous:
            raise FailedPrecondition(
                f"model {namespace}/{name}: version {state.promoted} is the only one ever "
                "promoted; there is no earlier one to roll back to (promote a version instead)"
            )
        return {
            "action": ROLLED_BACK,
            "version": state.previous[-1],
            "from_version": state.promoted,
            "by": by,
            "reason": reason or f"version {state.promoted} rolled back",
            "promoted": state.previous[-1],
            "previous": list(state.previous[:-1]),
        }

    state, _ = _append(storage, namespace, name, change)
    return state


def base_version(storage: Storage, namespace: str, name: str) -> int | None:
    """The version a retrain of the model starts from: the promoted one (else the one
    promoted before it that is finished); the newest finished version when the model
    has no promotion log; None when it has no finished version."""
    finished = layout.finished_versions(storage, namespace, name)
    return read(storage, namespace, name).serving_version(finished)
