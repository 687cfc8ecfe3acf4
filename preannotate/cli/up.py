"""``preannotate up``: the embedded mode — every service in one process.

All five services share one in-process bus (Kafka's semantics, no broker),
one local storage folder and in-process TensorFlow for inference; the gRPC
and HTTP endpoints are those of the distributed mode, on localhost.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from pathlib import Path

from preannotate.cli.run import SERVICES
from preannotate.settings import load


def embedded_settings(storage_root: Path, **common) -> list[tuple[object, object]]:
    """(spec, settings) of every service, set for the embedded mode."""
    out = []
    for name in SERVICES:
        settings_cls = getattr(
            importlib.import_module(f"services.{name}.settings"), f"{name.capitalize()}Settings"
        )
        overrides = {"bus": "memory", "storage": "local", "storage_root": storage_root, **common}
        if name == "inference":
            overrides["backend"] = "inprocess"
        settings = load(settings_cls, **overrides)
        spec = importlib.import_module(f"services.{name}.service").build(settings)
        out.append((spec, settings))
    return out


def add_arguments(_name: str, parser: argparse.ArgumentParser):
    parser.add_argument("--storage", type=Path, default=Path("var/storage"), help="storage folder")
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    return run


def run(args: argparse.Namespace) -> int:
    from preannotate.bus import MemoryBus
    from preannotate.runner import serve
    from preannotate.telemetry.logging import configure

    configure("embedded", "info", args.log_format)
    services = embedded_settings(args.storage.resolve(), log_format=args.log_format)
    asyncio.run(serve(services, bus=MemoryBus()))
    return 0
