"""``preannotate <command>``: one subcommand per service to run it, and the user commands.

    preannotate run exporter        run one service (distributed mode)
    preannotate up                  every service in one process (embedded mode)
    preannotate quickstart          the whole loop on a dataset it makes
    preannotate train / watch / cancel / jobs / models / model-types   (TrainingService)
    preannotate annotate / predict / review                          (InferenceService)
    preannotate weights list / pull / import     the pretrained weights in storage

Commands are registered in ``COMMANDS`` below: each names the module whose
``add_arguments(name, parser)`` declares its options and returns its handler.
Only the chosen command's module is imported, so ``preannotate jobs`` never
imports TensorFlow. The client commands (``training``, ``inference``) talk
gRPC only; ``run`` and ``up`` reach the services through ``service_table``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: name -> (module with add_arguments, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("preannotate.cli.run", "run one service in this process (distributed mode)"),
    "up": ("preannotate.cli.up", "run every service in one process (embedded mode)"),
    "quickstart": ("preannotate.cli.quickstart", "the whole loop on made-up data, on this machine"),
    "train": ("preannotate.cli.training", "ask for a model and follow its job with a progress bar"),
    "watch": ("preannotate.cli.training", "follow a job until it ends"),
    "cancel": ("preannotate.cli.training", "ask a job to stop"),
    "jobs": ("preannotate.cli.training", "list jobs"),
    "models": ("preannotate.cli.training", "list ready models"),
    "model-types": ("preannotate.cli.training", "list the model catalog"),
    "promote": ("preannotate.cli.training", "make a model version the one that serves (admin)"),
    "rollback": ("preannotate.cli.training", "serve the version promoted before (admin)"),
    "annotate": ("preannotate.cli.inference", "pre-annotate a CVAT task with a model"),
    "predict": ("preannotate.cli.inference", "run a model on image files"),
    "review": (
        "preannotate.cli.inference",
        "a task's frames ranked by how unsure the model was, with CVAT links",
    ),
    "weights": ("preannotate.cli.weights", "list, pull or import the pretrained weights"),
    "dlq": ("preannotate.cli.dlq", "list dead-lettered records; replay them to their topic"),
}

DESCRIPTION = "Turn annotated CVAT tasks into models that pre-annotate the next tasks."


def build_parser(command: str | None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser; only ``command``'s options are declared (and its module imported)."""
    parser = argparse.ArgumentParser(prog="preannotate", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers = {}
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            handlers[name] = importlib.import_module(module_name).add_arguments(name, cmd)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, handlers = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(handlers[args.command](args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
