"""``preannotate run <service>``: one service in this process, configured by the environment."""

from __future__ import annotations

import argparse
import importlib

SERVICES = ("gateway", "exporter", "trainer", "converter", "inference")


def add_arguments(_name: str, parser: argparse.ArgumentParser):
    parser.add_argument("service", choices=SERVICES, help="the service to run")
    return run


def run(args: argparse.Namespace) -> int:
    importlib.import_module(f"services.{args.service}.main").main()
    return 0
