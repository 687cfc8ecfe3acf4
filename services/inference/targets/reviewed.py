"""A CVAT target that opens review issues where the model was least sure.

``reviewed`` wraps the run's target when a run asks for review issues
(``review_issues``: the most issues per CVAT job). The model then runs down to
``threshold - review.WIDTH`` (``floor``), so that the detections just under the
threshold count as doubt too; only those at or above the inner target's own
floor reach it, so what is written does not change. ``finish`` ranks each job's
frames (``services.inference.review``) and opens a CVAT issue
(``POST /api/issues``) on each of its most doubtful frames, up to the cap,
skipping frames that hold an unresolved issue already (CVAT's issue list does
not show messages, so a frame flagged by a person or by an earlier run counts
the same; it keeps its place among the most doubtful): a redelivered run does not
open them twice. The issue points at the
frame's most doubtful box, with its label and score, and reviewers reach it
from the job's issue list in CVAT.

A run resumed after an interruption ranks only the frames it predicted itself
(the ledger skips those written before). Folders have no issues: asking for
them there is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from preannotate.errors import InvalidArgument
from services.inference import review
from services.inference.postprocess import Detected
from services.inference.targets.base import FrameResult, OnWritten, Target, TargetWrapper
from services.inference.targets.cvat import CvatTarget
from services.inference.targets.tracked import TrackedTarget, detection_floor


def reviewed(target: Target, *, issues_per_job: int, threshold: review.Cut) -> Target:
    """``target`` wrapped to open up to ``issues_per_job`` issues per CVAT job
    (0: returned as it is); refused on a folder."""
    if issues_per_job < 0:
        raise InvalidArgument(f"review_issues must be 0 or more, got {issues_per_job}")
    if not issues_per_job:
        return target
    inner = target.inner if isinstance(target, TrackedTarget) else target
    if not isinstance(inner, CvatTarget):
        raise InvalidArgument(
            f"{target.describe}: review issues are opened in CVAT tasks only; leave "
            "review_issues at 0 for a folder"
        )
    return ReviewedTarget(target, inner, issues_per_job=issues_per_job, threshold=threshold)


class ReviewedTarget(TargetWrapper):
    """The run's target, plus the issues opened at ``finish`` (module doc)."""

    def __init__(
        self, inner: Target, cvat: CvatTarget, *, issues_per_job: int, threshold: review.Cut
    ) -> None:
        super().__init__(inner)
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
        await self._open_issues()
        return written

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
