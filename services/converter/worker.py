"""The worker process: ``python -m services.converter.worker {export,check} JOB.json RESULT.json``.

The converter service itself imports no TensorFlow: each job's export and its
check run in processes of their own (``services.converter.process`` starts
them), so a job's memory is returned when it ends, a hung export can be
killed, and the check loads the SavedModel in a process that never saw the
model it came from.

``JOB.json`` holds the request's fields (paths as strings); ``RESULT.json``
gets ``{"ok": true, "facts": {...}}`` or ``{"ok": false, "error": <class name
in preannotate.errors, empty for any other exception>, "message": ...}``; the
exit status is 0, or ``EXIT_FAILED`` (3) with that result, or 2 when the
command line is wrong (no result written).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from preannotate.errors import PreannotateError

EXIT_FAILED = 3


def _paths(job: dict[str, Any], *names: str) -> dict[str, Any]:
    out = dict(job)
    for name in names:
        value = out.get(name)
        if isinstance(value, list):
            out[name] = [Path(v) for v in value]
        elif value is not None:
            out[name] = Path(value)
    return out


def run(command: str, job: dict[str, Any]) -> dict[str, Any]:
    if command == "export":
        from services.converter.export import ExportRequest, export_model

        fields = _paths(
            job,
            "experiment",
            "checkpoint",
            "classes_csv",
            "export_dir",
            "images",
            "reference_out",
            "tflite_out",
        )
        return export_model(ExportRequest(**fields))
    if command == "check":
        from services.converter.check import CheckRequest, check_export

        fields = _paths(job, "export_dir", "images", "outputs_out", "tflite")
        return check_export(CheckRequest(**fields))
    raise SystemExit(f"unknown command {command!r}: use export or check")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    command, job_path, result_path = args
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    job = json.loads(Path(job_path).read_text())
    try:
        result: dict[str, Any] = {"ok": True, "facts": run(command, job)}
        code = 0
    except PreannotateError as exc:
        result = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        code = EXIT_FAILED
    except Exception as exc:  # reported to the parent whole; it fails the job with it
        traceback.print_exc()
        result = {"ok": False, "error": "", "message": f"{type(exc).__name__}: {exc}"}
        code = EXIT_FAILED
    Path(result_path).write_text(json.dumps(result, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
