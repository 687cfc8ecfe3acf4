"""``preannotate run <service>``: one service in this process, configured by the environment.

``--once``: take up one record of the service's topic, settle it, and exit 0
(``PREANNOTATE_MAX_RECORDS=1``; the trainer as one Kubernetes Job per training).
"""

from __future__ import annotations

import argparse
import os

from preannotate.cli.service_table import SERVICES as TABLE
from preannotate.settings import ENV_PREFIX

#: The names ``run`` accepts, in the table's order.
SERVICES = tuple(TABLE)


def add_arguments(_name: str, parser: argparse.ArgumentParser):
    parser.add_argument("service", choices=SERVICES, help="the service to run")
    parser.add_argument(
        "--once",
        action="store_true",
        help=f"handle one record of the service's topic, then exit 0 (sets {ENV_PREFIX}MAX_RECORDS=1)",
    )
    return run


def run(args: argparse.Namespace) -> int:
    if args.once:
        # the service reads its settings from the environment of this process
        os.environ[f"{ENV_PREFIX}MAX_RECORDS"] = "1"
    TABLE[args.service].load().main()
    return 0
