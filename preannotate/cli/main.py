"""``preannotate <command>``: one subcommand per service to run it, and the user commands.

    preannotate run exporter        run one service (distributed mode)
    preannotate up                  every service in one process (embedded mode)
    preannotate quickstart          the whole loop on a dataset it makes
    preannotate train / jobs / models / model-types      (the gateway's client)
    preannotate annotate / predict                       (the inference client)

Commands are registered in ``COMMANDS`` below; each one's module is imported
only when it runs, so ``preannotate jobs`` never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

#: name -> (module under preannotate.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("preannotate.cli.run", "run one service in this process (distributed mode)"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    parser = argparse.ArgumentParser(
        prog="preannotate",
        description="Turn annotated CVAT tasks into models that pre-annotate the next tasks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers: dict[str, Callable] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        handlers[name] = module.add_arguments(name, cmd)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(handlers[args.command](args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
