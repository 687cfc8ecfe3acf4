"""The target interface and the types that cross it.

A target is where an annotation run reads its frames and writes what the
model found: a CVAT task (``targets.cvat``) or a local folder
(``targets.folder``). The annotator (``services.inference.annotate``) only
sees ``Target``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from preannotate.errors import InvalidArgument, NotFound, Unavailable
from services.inference.postprocess import Detected
from services.inference.settings import FILE_TARGET_ROOT, FILE_TARGETS_OFF

__all__ = ["FILE_TARGETS_OFF", "FILE_TARGET_ROOT"]  # the variables' names, for messages


#: Called by ``Target.write`` after each part of a batch is durable: (frames,
#: frame -> shapes written on it).
OnWritten = Callable[[Sequence[int], dict[int, int]], Awaitable[None]]


@dataclass(frozen=True)
class FrameResult:
    """What the model found on one frame, mapped to the target's labels."""

    frame: int
    width: int
    height: int
    #: (target label id, detection), for the detections whose class is a label there.
    found: list[tuple[int, Detected]] = field(default_factory=list)


class Target(Protocol):
    """A source of frames and a sink of shapes, for one run."""

    #: "cvat" or "folder" (metrics and logs).
    kind: str
    #: "CVAT task 12" or "folder /data/heldout" (messages).
    describe: str
    #: Whether each ``write`` is durable when it returns (CVAT: yes, so a rerun
    #: resumes after the frames written; folder: no, results are durable only
    #: after ``finish``, so a rerun starts over).
    resumable: bool

    async def pending(self) -> str | None:
        """None when the frames can be read; else why not yet (a CVAT task whose
        data is still being processed). Raises when they never will be."""

    async def labels(self) -> list[dict[str, Any]]:
        """The target's labels as CVAT lists them: ``{"id", "name"}`` (and
        ``parent_id`` for skeleton parts, which are not matched)."""

    async def frames(self) -> list[int]:
        """The frames to annotate, in order."""

    async def prepare(self, frames: Sequence[int]) -> int:
        """Called once before the first fetch. Replace mode: earlier automatic
        shapes go (CVAT: deleted now; folder: the file is rewritten whole at
        the end). Returns how many go."""

    def frame_name(self, frame: int) -> str:
        """How messages name the frame ("frame 3", "frame 3 (cat.jpg)")."""

    async def fetch(self, frame: int) -> bytes:
        """The frame's encoded bytes. ``NotFound``, ``InvalidArgument`` or
        ``Unavailable`` mean this frame cannot be had (it is skipped); other
        errors fail the run."""

    async def write(
        self, results: Sequence[FrameResult], on_written: OnWritten | None = None
    ) -> int:
        """Write one batch's results (every predicted frame, with or without
        detections); returns how many shapes were written. A resumable target
        awaits ``on_written`` after each part that is durable (a CVAT job's
        PATCH), so a failure later in the batch leaves the earlier parts recorded."""

    async def finish(self) -> int | None:
        """After the last write: make the results durable where they are not yet;
        returns the shapes written now (CVAT tracks, ``targets.tracked``), if any."""

    async def close(self) -> None: ...


def is_frame_problem(exc: BaseException) -> bool:
    """Whether a failed fetch is that frame's problem (skip it) rather than the
    run's (credentials, permissions, a bug: fail)."""
    return isinstance(exc, NotFound | InvalidArgument | Unavailable)


class TargetWrapper:
    """A target that passes every call to ``inner``; a wrapper (``targets.tracked``,
    ``targets.reviewed``) overrides what it changes."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.describe = inner.describe
        self.resumable = inner.resumable

    async def pending(self) -> str | None:
        return await self.inner.pending()

    async def labels(self) -> list[dict[str, Any]]:
        return await self.inner.labels()

    async def frames(self) -> list[int]:
        return await self.inner.frames()

    async def prepare(self, frames: Sequence[int]) -> int:
        return await self.inner.prepare(frames)

    def frame_name(self, frame: int) -> str:
        return self.inner.frame_name(frame)

    async def fetch(self, frame: int) -> bytes:
        return await self.inner.fetch(frame)

    async def write(
        self, results: Sequence[FrameResult], on_written: OnWritten | None = None
    ) -> int:
        return await self.inner.write(results, on_written)

    async def finish(self) -> int | None:
        return await self.inner.finish()

    async def close(self) -> None:
        await self.inner.close()
