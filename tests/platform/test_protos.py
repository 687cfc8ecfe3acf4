"""The generated code in preannotate/ is what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "nothing was generated"
    stale = [
        str(rel) for rel in fresh if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    committed = sorted(
        p.relative_to(ROOT) for d in ("preannotate",) for p in (ROOT / d).rglob("*_pb2*.py*")
    )
    assert not stale, f"stale generated code, run `make protos`: {stale}"
    assert committed == fresh, "generated files without a proto, or a proto never generated"


def test_every_topic_has_one_event_message():
    from preannotate import topics
    from preannotate.v1 import events_pb2

    names = {topics.message_type(t).DESCRIPTOR.name for t in topics.all_topics(["cpu", "gpu-4"])}
    assert names == {
        "TaskAnnotated",
        "DatasetExported",
        "ModelTrained",
        "ModelConverted",
        "AnnotationRequested",
        "TaskPreannotated",
        "JobStatus",
    }
    assert topics.message_type("train.jobs.gpu-4") is events_pb2.DatasetExported
