#!/usr/bin/env python3
"""Regenerate Python code and type stubs from protos/ (grpcio-tools, mypy-protobuf).

    python scripts/gen_protos.py            # write into the repository
    python scripts/gen_protos.py --out DIR  # write elsewhere (the staleness test)

Every ``protos/**/*.proto`` compiles to ``<path>_pb2.py`` and ``.pyi`` beside
the shared package (``protos/preannotate/v1/events.proto`` becomes
``preannotate/v1/events_pb2.py``); services get ``_pb2_grpc.py`` too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Compile every proto into ``out``; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    plugin = shutil.which("protoc-gen-mypy") or str(Path(sys.executable).parent / "protoc-gen-mypy")
    plugin_grpc = shutil.which("protoc-gen-mypy_grpc") or str(
        Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    )
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTOS)) for p in proto_files()]
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_grpc}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for rel in files:
        stem = out / rel[: -len(".proto")]
        has_service = "\nservice " in (PROTOS / rel).read_text()
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            path = stem.with_name(stem.name + suffix)
            if "_grpc" in suffix and not has_service:
                path.unlink(missing_ok=True)  # messages only: no gRPC module
            elif path.exists():
                written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write (default: the repo)")
    ns = parser.parse_args()
    written = generate(ns.out)
    for path in written:
        print(os.path.relpath(path, ns.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
