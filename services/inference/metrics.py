"""The inference service's Prometheus metrics (served on its /metrics with the
platform's, ``preannotate.telemetry.metrics``). No TensorFlow here.

The ``model`` label is ``<namespace>/<name>`` (versions would make a new
series at every retraining; the registry's logs name the version). Frames
and latency count every predict call whatever asked for it: annotation runs,
gRPC Predict and StreamPredict, CVAT's Nuclio calls.

    preannotate_inference_frames_total{model}               frames predicted
    preannotate_inference_latency_seconds{model}            one backend predict call (a batch)
    preannotate_inference_batch_size{model}                 frames per predict call
    preannotate_inference_predict_failures_total{model}     predict calls that raised
    preannotate_inference_frames_skipped_total{reason}      frames an annotation run skipped
    preannotate_inference_shapes_written_total{model,target}
    preannotate_inference_runs_total{target,outcome}        annotation runs by how they ended
    preannotate_inference_models_known                      model versions in the registry
    preannotate_inference_models_loaded{backend}            versions held by the backend
    preannotate_inference_models_quarantined{backend}       versions that failed to load, left out
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: Why an annotation run skipped a frame (the ``reason`` label).
SKIP_FETCH = "fetch"
SKIP_DECODE = "decode"

FRAMES = Counter(
    "preannotate_inference_frames",
    "Frames predicted, by any door (annotation runs, gRPC, Nuclio)",
    ["model"],
)
LATENCY = Histogram(
    "preannotate_inference_latency_seconds",
    "Time of one predict call to the backend (one batch, or one request's batch)",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "preannotate_inference_batch_size",
    "Frames per predict call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICT_FAILURES = Counter(
    "preannotate_inference_predict_failures",
    "Predict calls to the backend that raised",
    ["model"],
)
FRAMES_SKIPPED = Counter(
    "preannotate_inference_frames_skipped",
    "Frames an annotation run skipped: fetch (download or read failed), decode (not an image)",
    ["reason"],
)
SHAPES_WRITTEN = Counter(
    "preannotate_inference_shapes_written",
    "Shapes written by annotation runs, by target (cvat, folder)",
    ["model", "target"],
)
RUNS = Counter(
    "preannotate_inference_runs",
    "Annotation runs by target (cvat, folder) and outcome (succeeded, failed, cancelled, "
    "interrupted)",
    ["target", "outcome"],
)
MODELS_KNOWN = Gauge(
    "preannotate_inference_models_known",
    "Model versions this replica's registry knows",
)
MODELS_LOADED = Gauge(
    "preannotate_inference_models_loaded",
    "Model versions the backend holds: loaded in memory (inprocess) or in TF Serving's config",
    ["backend"],
)
MODELS_QUARANTINED = Gauge(
    "preannotate_inference_models_quarantined",
    "Model versions that failed to load in TF Serving and are left out of its config "
    "(see the inference service's logs and ListModels for which)",
    ["backend"],
)


def model_label(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def observe_predict(model: str, frames: int, seconds: float) -> None:
    """One successful predict call of ``frames`` frames that took ``seconds``."""
    FRAMES.labels(model).inc(frames)
    LATENCY.labels(model).observe(seconds)
    BATCH_SIZE.labels(model).observe(frames)
