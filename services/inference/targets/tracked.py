"""A CVAT target that writes tracks: for videos, or for any task on request.

``tracked`` wraps the run's target (``app.annotate``). On a CVAT target the
wrapper decides once the frames are known (so after CVAT has processed the
task's data): with tracks asked for, or when the task is a video (CVAT's
task ``mode`` is "interpolation" for video data, "annotation" for images),
the per-frame results are held instead of written, and ``finish`` links them
(``services.inference.tracks``) and PATCHes each job its part of every track
(``action=create``, ``tracks``). Otherwise every call goes straight through.

While tracking, ``detection_floor`` lowers the threshold the model runs at to
``threshold * low_ratio``: the lower-scored detections only continue tracks
(ByteTrack's second pass) and are never written as shapes of their own.

Replace mode removes earlier automatic tracks (``source: "auto"``) as well as
shapes, whether this run writes tracks or not. Nothing is in CVAT before
``finish``: a run stopped before it leaves no tracks, and its rerun starts the
video over (the ledger records no written frames while tracking).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from preannotate.errors import InvalidArgument
from services.inference import tracks
from services.inference.targets.base import FrameResult, OnWritten, Target, TargetWrapper
from services.inference.targets.cvat import CvatTarget

#: Tracks per PATCH (each holds its keyframes).
WRITE_CHUNK = 200


def tracked(
    target: Target,
    *,
    requested: bool,
    threshold: float,
    settings: tracks.TrackSettings | None = None,
    label_thresholds: bool = False,
) -> Target:
    """``target`` wrapped to write tracks where they apply (module doc); a folder
    target is returned as it is, and refused when tracks are asked for. Tracks
    link on the run's one threshold: with ``label_thresholds`` (labels' own),
    tracks are refused (asked for now; for a video, once its frames are known)."""
    if requested and label_thresholds:
        raise InvalidArgument(_PER_LABEL)
    if isinstance(target, CvatTarget):
        return TrackedTarget(
            target,
            requested=requested,
            threshold=threshold,
            settings=settings,
            label_thresholds=label_thresholds,
        )
    if requested:
        raise InvalidArgument(
            f"{target.describe}: tracks are written to CVAT tasks only (COCO files hold no "
            "tracks); leave tracks off for a folder"
        )
    return target


_PER_LABEL = (
    "tracks link detections on the run's one threshold; label thresholds apply to "
    "per-frame shapes only: drop the label thresholds (or the tracks)"
)


def detection_floor(target: Target, threshold: float) -> float:
    """The score the model should keep detections from on ``target``: lower than the
    run's threshold while tracks are written (module doc) or review issues are
    ranked (``targets.reviewed``): a wrapper that wants more says so with ``floor``."""
    floor = getattr(target, "floor", None)
    return floor(threshold) if callable(floor) else threshold


class TrackedTarget(TargetWrapper):
    """A ``CvatTarget`` whose results become tracks when the task is a video or
    tracks are asked for."""

    inner: CvatTarget

    def __init__(
        self,
        inner: CvatTarget,
        *,
        requested: bool,
        threshold: float,
        settings: tracks.TrackSettings | None = None,
        label_thresholds: bool = False,
    ) -> None:
        super().__init__(inner)
        self.label_thresholds = label_thresholds
        self.requested = requested
        self.threshold = threshold
        self.settings = settings or tracks.TrackSettings()
        #: Decided in ``frames``: whether this run writes tracks.
        self.active = False
        self._seen: list[tuple[int, list[tracks.Detection]]] = []
        self._sizes: dict[int, tuple[int, int]] = {}  # frame -> (width, height)

    def floor(self, threshold: float) -> float:
        return threshold * self.settings.low_ratio if self.active else threshold

    async def frames(self) -> list[int]:
        frames = await self.inner.frames()
        self.active = self.requested or await self.is_video()
        if self.active and self.label_thresholds:
            raise InvalidArgument(f"{self.describe} is a video (written as tracks): {_PER_LABEL}")
        return frames

    async def is_video(self) -> bool:
        task = await self.inner.client.request("GET", f"/api/tasks/{self.inner.task_id}")
        return task.get("mode") == "interpolation"

    async def prepare(self, frames: Sequence[int]) -> int:
        deleted = await self.inner.prepare(frames)
        if not self.inner.replace:
            return deleted
        for job_id in sorted({self.inner.owners[f] for f in frames}):
            data = await self.inner.client.job_annotations(job_id)
            auto = [t for t in data.get("tracks", []) if t.get("source") == "auto"]
            if auto:
                await self._patch(job_id, "delete", auto)
                deleted += len(auto)
        return deleted

    async def write(
        self, results: Sequence[FrameResult], on_written: OnWritten | None = None
    ) -> int:
        """Tracking: hold the results for ``finish`` (0 written now); else write them."""
        if not self.active:
            return await self.inner.write(results, on_written)
        for result in results:
            self._sizes[result.frame] = (result.width, result.height)
            found = [
                tracks.Detection(label_id, det.pixel_box(result.width, result.height), det.score)
                for label_id, det in result.found
            ]
            self._seen.append((result.frame, found))
        return 0

    async def finish(self) -> int:
        """Tracking: link, reduce and write the tracks; returns the track shapes written."""
        await self.inner.finish()
        if not self.active:
            return 0
        self._seen.sort(key=lambda item: item[0])
        linked = tracks.link(self._seen, self.threshold, self.settings)
        ranges = self._job_ranges()
        per_job: dict[int, list[dict[str, Any]]] = {job_id: [] for job_id, _ in ranges}
        for track in linked:
            whole = tracks.cvat_track(track, self.settings, self._sizes[track.frames[0]])
            for index, part in tracks.split_track(whole, [r for _, r in ranges]):
                per_job[ranges[index][0]].append(part)
        written = 0
        for job_id, parts in per_job.items():
            if parts:
                await self._patch(job_id, "create", parts)
                written += sum(len(p["shapes"]) for p in parts)
        return written

    def _job_ranges(self) -> list[tuple[int, tuple[int, int]]]:
        """(job id, (first frame, last frame)) of the frames each job holds in this run."""
        spans: dict[int, tuple[int, int]] = {}
        for frame, job_id in self.inner.owners.items():
            first, last = spans.get(job_id, (frame, frame))
            spans[job_id] = (min(first, frame), max(last, frame))
        return sorted(spans.items(), key=lambda item: item[1])

    async def _patch(self, job_id: int, action: str, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), WRITE_CHUNK):
            body = {
                "version": 0,
                "tags": [],
                "shapes": [],
                "tracks": items[start : start + WRITE_CHUNK],
            }
            await self.inner.client.request(
                "PATCH", f"/api/jobs/{job_id}/annotations", params={"action": action}, body=body
            )
