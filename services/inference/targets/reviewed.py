"""A CVAT target that ranks its frames by doubt, and opens review issues where the
model was least sure.

``reviewed`` wraps every CVAT target: a run asking for review issues
(``review_issues``: the most issues per CVAT job) gets them, one with 0 gets
the ranking only. The model runs down to ``threshold - review.WIDTH``
(``floor``), so that the detections just under the threshold count as doubt
too; only those at or above the inner target's own floor reach it, so what is
written does not change. ``finish`` ranks each job's frames
(``services.inference.review``) and opens a CVAT issue (``POST /api/issues``)
on each of its most doubtful frames, up to the cap, skipping frames that hold
an unresolved issue already (CVAT's issue list does not show messages, so a
frame flagged by a person or by an earlier run counts the same; it keeps its
place among the most doubtful): a redelivered run does not open them twice.
The issue points at the frame's most doubtful box, with its label and score,
and reviewers reach it from the job's issue list in CVAT. Then the whole ranking (``ranking``: every
frame with some doubt, across the jobs, with the issues opened) goes to
``on_ranked``, which keeps it (``services.inference.reviewstore``) for
``preannotate review TASK`` and ``GetReview``.

A run resumed after an interruption ranks only the frames it predicted itself
(the ledger skips those written before); a run that predicted none (everything
was written before) hands no ranking on, so the one kept stays. Folders are
neither ranked nor given issues: asking for issues there is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from preannotate.errors import InvalidArgument
from services.inference import review
from services.inference.postprocess import Detected
from services.inference.targets.base import FrameResult, OnWritten, Target, TargetWrapper
from services.inference.targets.cvat import CvatTarget
from services.inference.targets.tracked import TrackedTarget, detection_floor


@dataclass(frozen=True)
class RankedFrame:
    """One frame of a run's ranking: its doubt, the CVAT job that holds it, its size
    (for the box in pixels) and whether this run opened an issue on it."""

    doubt: review.FrameDoubt
    job: int
    width: int
    height: int
    issue_opened: bool


#: Called by ``finish`` with the run's ranking (the most doubtful first) and how
#: many frames were ranked, those without doubt (not in the ranking) too.
OnRanked = Callable[[list[RankedFrame], int], Awaitable[None]]


def reviewed(
    target: Target,
    *,
    issues_per_job: int,
    threshold: review.Cut,
    on_ranked: OnRanked | None = None,
) -> Target:
    """A CVAT ``target`` wrapped to rank its frames and open up to ``issues_per_job``
    issues per CVAT job (0: none); a folder is returned as it is, and refused when
    issues are asked for."""
    if issues_per_job < 0:
        raise InvalidArgument(f"review_issues must be 0 or more, got {issues_per_job}")
    inner = target.inner if isinstance(target, TrackedTarget) else target
    if not isinstance(inner, CvatTarget):
        if not issues_per_job:
            return target
        raise InvalidArgument(
            f"{target.describe}: review issues are opened in CVAT tasks only; leave "
            "review_issues at 0 for a folder"
        )
    return ReviewedTarget(
        target, inner, issues_per_job=issues_per_job, threshold=threshold, on_ranked=on_ranked
    )


class ReviewedTarget(TargetWrapper):
    """The run's target, plus the issues opened at ``finish`` (module doc)."""

    def __init__(
        self,
        inner: Target,
        cvat: CvatTarget,
        *,
        issues_per_job: int,
        threshold: review.Cut,
        on_ranked: OnRanked | None = None,
    ) -> None:
        super().__init__(inner)
        self.on_ranked = on_ranked
        self.cvat = cvat
        self.issues_per_job = issues_per_job
        #: The run's threshold, or each label's (``review.Cut``).
        self.threshold = threshold
        self._cut = review.cut_of(threshold)
        #: frame -> (width, height, every detection down to ``floor``).
        self.seen: dict[int, tuple[int, int, list[Detected]]] = {}
        #: Issues opened by ``finish``: (job id, frame).
        self.opened: list[tuple[int, int]] = []

    def floor(self, threshold: float) -> float:
        """The model runs down to the band under the threshold (and lower if the
        inner target wants it)."""
        return max(0.0, min(detection_floor(self.inner, threshold), threshold - review.WIDTH))

    async def write(
        self, results: Sequence[FrameResult], on_written: OnWritten | None = None
    ) -> int:
        passed = []
        for result in results:
            self.seen[result.frame] = (result.width, result.height, [d for _, d in result.found])
            kept = [
                (label, d)
                for label, d in result.found
                if d.score >= detection_floor(self.inner, self._cut(d.label))
            ]
            passed.append(FrameResult(result.frame, result.width, result.height, kept))
        return await self.inner.write(passed, on_written)

    async def finish(self) -> int | None:
        written = await self.inner.finish()
        if self.issues_per_job:
            await self._open_issues()
        if self.on_ranked is not None and self.seen:
            await self.on_ranked(self.ranking(), len(self.seen))
        return written

    def ranking(self) -> list[RankedFrame]:
        """Every frame this run predicted with some doubt, across its jobs, the most
        doubtful first (``review.rank``); frames with no doubt are left out."""
        opened = set(self.opened)
        frames = {f: found for f, (_, _, found) in self.seen.items() if f in self.cvat.owners}
        out = []
        for item in review.rank(frames, self.threshold):
            if item.doubt <= 0:
                break  # ranked by doubt: the rest have none
            width, height, _ = self.seen[item.frame]
            job = self.cvat.owners[item.frame]
            out.append(RankedFrame(item, job, width, height, (job, item.frame) in opened))
        return out

    async def _open_issues(self) -> None:
        by_job: dict[int, dict[int, list[Detected]]] = {}
        for frame, (_, _, found) in self.seen.items():
            job = self.cvat.owners.get(frame)
            if job is not None:
                by_job.setdefault(job, {})[frame] = found
        for job, frames in sorted(by_job.items()):
            ranked = [d for d in review.rank(frames, self.threshold) if d.doubt > 0]
            if not ranked:
                continue
            flagged = {
                issue.get("frame")
                for issue in await self.cvat.client.issues(job)
                if not issue.get("resolved", False)
            }
            for item in ranked[: self.issues_per_job]:  # a flagged frame uses its place
                if item.frame in flagged:
                    continue
                width, height, _ = self.seen[item.frame]
                body = review.issue(job, item, (width, height), self.threshold)
                await self.cvat.client.create_issue(body)
                self.opened.append((job, item.frame))
