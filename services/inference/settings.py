"""The inference service's settings: serving backend, batching, CVAT access, ports.

Every field is read from ``PREANNOTATE_<FIELD>`` (upper case), e.g.
``PREANNOTATE_BACKEND=tfserving``, ``PREANNOTATE_TFSERVING_ADDRESS``,
``PREANNOTATE_INFERENCE_BATCH_SIZE``. The service's own fields carry an
``inference_`` (or ``tfserving_`` / ``nuclio_``) prefix, since the embedded
mode reads every service's settings from one environment; the CVAT connection
fields are ``preannotate.cvat.CvatSettings``'s, shared with the exporter (one
set of variables serves both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from preannotate.cvat import CvatSettings
from preannotate.cvat.refs import check_file_root

FILE_TARGETS_OFF = "PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS"
FILE_TARGET_ROOT = "PREANNOTATE_INFERENCE_FILE_TARGET_ROOT"

MiB = 1 << 20


class InferenceSettings(CvatSettings):
    """Settings of the inference service (``PREANNOTATE_`` + field name in upper case);
    the CVAT connection fields come from ``preannotate.cvat.CvatSettings``."""

    # Serving backend.
    #: "inprocess": TensorFlow in this process (embedded default); "tfserving":
    #: a TF Serving server over gRPC.
    backend: Literal["inprocess", "tfserving"] = "inprocess"
    #: host:port of TF Serving's gRPC API.
    tfserving_address: str = "127.0.0.1:8500"
    #: What TF Serving sees as the root of the storage: each model's base_path
    #: is this + "/<namespace>/serving/<name>" (e.g. "s3://preannotate" or
    #: "/models"). Empty: the storage's own URI of the key.
    tfserving_base_path: str = ""
    #: How long a model may take to become AVAILABLE after a config reload.
    tfserving_load_timeout_seconds: float = Field(300.0, gt=0)
    #: Deadline of one Predict call.
    tfserving_rpc_timeout_seconds: float = Field(60.0, gt=0)
    #: What Predict sends: "encoded" (the JPEG/PNG bytes, to serving_default)
    #: or "tensor" (decoded pixels, to the image-tensor signature).
    tfserving_input: Literal["encoded", "tensor"] = "encoded"
    #: Versions of each model TF Serving loads: the newest N; older ones are
    #: refused. deploy/'s serving-sync keeps the same N in TF Serving's mirror.
    tfserving_keep_versions: int = Field(3, ge=1)

    #: In-process backend: most MiB of SavedModels (their size on disk) kept
    #: loaded; the least recently used is dropped first.
    inference_memory_budget_mb: int = Field(2048, ge=1)
    #: In-process backend: local copies of the SavedModels from storage.
    inference_model_cache_dir: Path = Path("var/cache/inference")

    # Batching and concurrency.
    inference_batch_size: int = Field(8, ge=1, le=256)
    #: How long a single-image request (Predict, Nuclio) waits for others to
    #: share its batch.
    inference_batch_wait_ms: float = Field(5.0, ge=0)
    #: Model calls in flight at once (per process).
    inference_concurrency: int = Field(1, ge=1)
    #: Frames downloaded and decoded at once during an annotation run.
    inference_fetch_concurrency: int = Field(8, ge=1)
    #: Most images a StreamPredict call may have in flight.
    inference_stream_window: int = Field(64, ge=1)

    # What is written to CVAT.
    #: Score threshold of a run that sets none (0), used only when its model suggests
    #: none either: a model's suggestion (the best F1 on its validation split) comes
    #: first, and a model trained with eval=false has none.
    inference_default_threshold: float = Field(0.5, ge=0, le=1)
    #: Mask R-CNN shapes: "mask" (CVAT masks) or "polygon" (the mask's outline).
    inference_mask_shape: Literal["mask", "polygon"] = "mask"

    # CVAT (the connection fields are CvatSettings').
    #: Frame quality fetched from CVAT: "original" or "compressed".
    cvat_frame_quality: Literal["original", "compressed"] = "original"
    #: Longest wait for a task's data: CVAT fires create:task before the data
    #: is uploaded and processed (minutes for a large upload); a run polls
    #: until the frames and jobs are in, then fails with what CVAT was at.
    cvat_data_wait_seconds: float = Field(1800.0, ge=0)

    # Local folders as targets (CvatRef.url = file://<root>, see targets.folder).
    #: Whether a run may read <root>/images/default/ and write
    #: <root>/annotations/instances_default.json instead of a CVAT task (off
    #: by default; on in the embedded mode); needs
    #: PREANNOTATE_INFERENCE_FILE_TARGET_ROOT.
    inference_allow_file_targets: bool = False
    #: The folder every file:// target must lie in (after resolving symbolic
    #: links and ..); required when PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS is on.
    inference_file_target_root: Path | None = None

    # Limits on requests.
    #: Most pixels (width x height) of one image; larger ones are refused from
    #: their header, before they are decoded (at most 178000000, where Pillow's
    #: own decompression-bomb check refuses).
    inference_max_image_pixels: int = Field(40_000_000, ge=1, le=178_000_000)
    #: Most single-image requests (Predict, StreamPredict images) in progress at
    #: once per process; more are answered RESOURCE_EXHAUSTED with a retry hint.
    inference_max_concurrent_requests: int = Field(64, ge=1)

    # Access.
    #: YAML file of bearer tokens and their namespaces (see preannotate.auth);
    #: the gateway reads the same variable. None: InferenceService is open.
    tokens_file: Path | None = None

    # Ports.
    inference_grpc_port: int = Field(50052, ge=0, le=65535)
    #: The Nuclio dashboard API that CVAT's lambda manager calls (CVAT_NUCLIO_PORT).
    nuclio_port: int = Field(8070, ge=0, le=65535)
    #: Namespaces whose models the Nuclio port lists and runs, comma-separated
    #: (it has no authentication: CVAT sends none). Empty: ``namespace`` only.
    nuclio_namespaces: str = ""
    #: Largest Nuclio invocation body (base64 of one frame); larger: 413.
    nuclio_max_body_bytes: int = Field(32 * MiB, ge=1024)
    #: Nuclio invocations in flight at once; more: 429 with Retry-After.
    nuclio_concurrency: int = Field(8, ge=1)

    @field_validator("tfserving_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("must be host:port, e.g. tfserving:8500")
        return value

    @field_validator("tokens_file")
    @classmethod
    def _check_tokens_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file at {value}")
        return value

    @model_validator(mode="after")
    def _check_file_root(self) -> InferenceSettings:
        check_file_root(
            self.inference_allow_file_targets,
            self.inference_file_target_root,
            FILE_TARGETS_OFF,
            FILE_TARGET_ROOT,
        )
        return self

    @property
    def memory_budget_bytes(self) -> int:
        return self.inference_memory_budget_mb * MiB
