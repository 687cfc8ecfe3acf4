"""Videos as CVAT tracks: how many keyframes are written and how close CVAT's
interpolation of them stays to the truth.

    .venv/bin/python bench/tracks.py [--videos 20] [--frames 300] [--objects 4]

Synthetic videos (tests/inference/videos.py): objects of two labels on straight
and curved paths, entering late and leaving early, seen by a made-up detector
(1.5 px noise, 5 % missed frames, 10 % scored under the threshold, false boxes).
For each object and its track (services/inference/tracks.py, default settings):
keyframes written per 100 frames of the object, and the IoU of the box CVAT
shows (linear between keyframes) against the truth, on every frame from the
object's first detection at the threshold to its last detection. The same
per-frame detections written as shapes are the baseline: 100 shapes per 100
frames, at the detector's own IoU. Also: objects with one track, tracks that
are not objects, and frames where a track shows a box but no object is there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def run(videos_n: int, frames: int, objects: int, keyframe_iou: float | None) -> dict:
    import numpy as np

    from services.inference import tracks
    from tests.inference import videos

    settings = tracks.TrackSettings()
    if keyframe_iou is not None:
        settings = tracks.TrackSettings(keyframe_iou=keyframe_iou)
    per_100: list[float] = []
    ious: list[float] = []
    detector_ious: list[float] = []
    one_track = total = extra_tracks = extra_frames = low = 0
    seconds = 0.0
    for seed in range(videos_n):
        movers = videos.movers(frames, seed=seed, count=objects)
        found = videos.detect(movers, frames, seed=seed)
        started = time.perf_counter()
        linked = [tracks.cvat_track(t, settings) for t in tracks.link(found, 0.5, settings)]
        seconds += time.perf_counter() - started
        fits = videos.fit(movers, linked, frames)
        extra_tracks += len(linked) - len({id(f.track) for f in fits if f.track is not None})
        for fit in fits:
            obj = fit.obj
            total += 1
            if fit.track is None:
                continue
            # One track for the object: no other track shows its box (IoU >= 0.5) anywhere.
            shown = [tracks.expand(t["shapes"], range(obj.enter, obj.leave)) for t in linked]
            following = {
                i
                for i, boxes in enumerate(shown)
                if linked[i]["label_id"] == obj.label
                and any(
                    tracks.iou_pairs(np.array(box), np.array(obj.box(f))) >= 0.5
                    for f, box in boxes.items()
                )
            }
            one_track += len(following) == 1
            extra_frames += fit.extra
            first = last = None
            for frame, dets in found:
                for d in dets:
                    if d.label != obj.label or not obj.enter <= frame < obj.leave:
                        continue
                    score = tracks.iou_pairs(np.array(d.box), np.array(obj.box(frame)))
                    if score > 0.5:
                        detector_ious.append(float(score))
                        if d.score >= 0.5 and first is None:
                            first = frame
                        last = frame
            span = fit.ious[first - obj.enter : last - obj.enter + 1]
            ious += span
            low += sum(1 for v in span if v < 0.5)
            per_100.append(100 * fit.keyframes / (obj.leave - obj.enter))
    return {
        "objects": total,
        "one_track": one_track,
        "extra_tracks": extra_tracks,
        "extra_frames": extra_frames,
        "keyframes_per_100": statistics.mean(per_100),
        "keyframes_per_100_max": max(per_100),
        "iou_mean": statistics.mean(ious),
        "under_half": low / len(ious),
        "iou_p5": float(np.percentile(ious, 5)),
        "detector_iou_mean": statistics.mean(detector_ious),
        "link_ms_per_frame": 1000 * seconds / (videos_n * frames),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument(
        "--keyframe-iou", type=float, nargs="*", default=[], help="also run at these tolerances"
    )
    args = parser.parse_args(argv)
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    print(
        "| keyframe_iou | objects | one track | extra tracks | keyframes / 100 frames (max) "
        "| IoU mean | IoU p5 | frames IoU < 0.5 | extra box frames | detector IoU | link ms/frame |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tol in [None, *args.keyframe_iou]:
        r = run(args.videos, args.frames, args.objects, tol)
        print(
            f"| {tol if tol is not None else '0.85 (default)'} | {r['objects']} | {r['one_track']} "
            f"| {r['extra_tracks']} | {r['keyframes_per_100']:.1f} ({r['keyframes_per_100_max']:.1f}) "
            f"| {r['iou_mean']:.3f} | {r['iou_p5']:.3f} | {100 * r['under_half']:.2f} % "
            f"| {r['extra_frames']} "
            f"| {r['detector_iou_mean']:.3f} | {r['link_ms_per_frame']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
