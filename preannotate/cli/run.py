"""``preannotate run <service>``: one service in this process, configured by the environment."""

from __future__ import annotations

import argparse

from preannotate.cli.service_table import SERVICES as TABLE

#: The names ``run`` accepts, in the table's order.
SERVICES = tuple(TABLE)


def add_arguments(_name: str, parser: argparse.ArgumentParser):
    parser.add_argument("service", choices=SERVICES, help="the service to run")
    return run


def run(args: argparse.Namespace) -> int:
    TABLE[args.service].load().main()
    return 0
