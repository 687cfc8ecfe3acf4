"""The converter's settings: work folder, parity check, TFLite, worker processes.

Every field is read from ``PREANNOTATE_<FIELD>`` (upper case), e.g.
``PREANNOTATE_CONVERT_WORK_DIR``, ``PREANNOTATE_CONVERT_PARITY_TOLERANCE``.
Bus, storage and telemetry come from ``ServiceSettings``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from preannotate.settings import ServiceSettings


class ConverterSettings(ServiceSettings):
    """Settings of the converter (``PREANNOTATE_`` + field name in upper case)."""

    #: Each job gets its own folder below this one, removed when the job ends.
    convert_work_dir: Path = Path("var/converter")
    #: Largest absolute difference allowed between the restored checkpoint and
    #: the exported SavedModel: normalised box coordinates, scores, mask values.
    convert_parity_tolerance: float = Field(1e-3, gt=0, le=0.5)
    #: Images the parity check runs (from the job's validation split, else synthetic).
    convert_parity_images: int = Field(4, ge=1, le=64)
    #: Largest validation shard downloaded to find parity images.
    convert_parity_max_shard_bytes: int = Field(256 << 20, gt=0)
    #: Also write a TFLite model beside the SavedModel (single-stage models only).
    convert_tflite: bool = False
    #: Wall-clock limit of one worker process (export, or the fresh-process check).
    convert_subprocess_timeout_seconds: float = Field(1800.0, gt=0)
    #: The Python that runs the worker processes; empty: the service's own.
    convert_python: str = ""
    #: TF_NUM_INTRAOP_THREADS / INTEROP for the workers; 0 leaves TensorFlow's default.
    convert_threads: int = Field(0, ge=0)

    def python(self) -> str:
        return self.convert_python or sys.executable
