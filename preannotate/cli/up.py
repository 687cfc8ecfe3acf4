"""``preannotate up``: the embedded mode — every service in one process.

All five services share one in-process bus (Kafka's semantics, no broker),
one local storage folder and in-process TensorFlow for inference; the gRPC
and HTTP endpoints are those of the distributed mode, on 127.0.0.1 only and
open (``auth="none"``: no tokens; the runner says so once in the log).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from preannotate.cli.service_table import SERVICES
from preannotate.cvat.refs import embedded_file_urls
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings, load


def embedded_settings(storage_root: Path, **common) -> list[tuple[ServiceSpec, ServiceSettings]]:
    """(spec, settings) of every service of ``SERVICES``, set for the embedded mode."""
    out = []
    for entry in SERVICES.values():
        parts = entry.load()
        base = {
            "bus": "memory",
            "storage": "local",
            "storage_root": storage_root,
            "bind_host": "127.0.0.1",
            "auth": "none",
            **embedded_file_urls(storage_root.parent),  # file:// on, under that folder
        }
        settings = load(parts.settings, **{**base, **common, **entry.embedded})
        out.append((parts.build(settings), settings))
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
