"""``preannotate weights list | pull [MODEL...] | import MODEL FILE``: the pretrained weights.

Works on the deployment's storage directly, built from the same settings the
services read (``PREANNOTATE_STORAGE``, ``PREANNOTATE_STORAGE_ROOT``,
``PREANNOTATE_S3_*``), with the mirror settings ``PREANNOTATE_WEIGHTS_MIRROR``,
``PREANNOTATE_WEIGHTS_URLS`` and ``PREANNOTATE_WEIGHTS_TIMEOUT_SECONDS``
(docs/weights.md). ``pull`` shows a bar per download on a terminal, plain lines
elsewhere (``--progress``, ``preannotate.cli.display``). Exit codes: 0 done, 1 a
pull or import was refused, 2 bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from preannotate.cli import display
from preannotate.errors import FailedPrecondition, InvalidArgument

OK, FAILED, BAD_INPUT = 0, 1, 2


def add_arguments(name: str, parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="each model type's weights: source, what they cover, installed")
    pull = sub.add_parser("pull", help="download, verify and store weights (all when none named)")
    pull.add_argument("models", nargs="*", metavar="MODEL", help="model types (default: all)")
    display.add_option(pull)
    imp = sub.add_parser("import", help="store a file downloaded elsewhere (air-gapped sites)")
    imp.add_argument("model", metavar="MODEL")
    imp.add_argument("file", type=Path, metavar="FILE", help="an archive, an .h5, or a .index")
    return run


def _store():
    from preannotate.settings import ServiceSettings, load
    from preannotate.storage import open_storage
    from preannotate.weights import WeightsStore

    settings = load(ServiceSettings)
    return WeightsStore.from_settings(open_storage(settings), settings)


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    try:
        store = _store()
        if args.action == "list":
            return list_weights(store, console)
        if args.action == "pull":
            return pull(store, args.models, console, progress=args.progress)
        return import_file(store, args.model, args.file, console)
    except InvalidArgument as exc:
        console.print(f"[red]error:[/red] {exc}")
        return BAD_INPUT


def list_weights(store, console: Console) -> int:
    from preannotate.weights import sources

    table = Table()
    for column in ("model type", "dataset", "covers", "installed", "URL"):
        table.add_column(column, overflow="fold")
    for source in sources():
        found = store.installed(source.model_type)
        table.add_row(
            source.model_type,
            source.dataset,
            source.covers,
            found.sha256[:12] if found else "missing",
            store.url_for(source.model_type),
        )
    console.print(table)
    return OK


def _megabytes(done: int, total: int | None) -> str:
    if not total:
        return f"{done / 1e6:.1f} MB"
    return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done // total} %)"


def pull(store, models: list[str], console: Console, *, progress: str = "") -> int:
    """Download, verify and store each model type's weights (``progress``: bar, plain, none)."""
    from preannotate.weights import source_for, sources

    chosen = [source_for(m) for m in models] if models else sources()
    mode = display.choose(console, progress)
    lines = display.Lines.for_mode(console, mode)
    status = OK
    for source in chosen:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            transient=True,
            disable=mode != "bar",
        ) as bar:
            task = bar.add_task(source.model_type, total=None)

            def report(
                done: int, total: int | None, task=task, bar=bar, name=source.model_type
            ) -> None:
                bar.update(task, completed=done, total=total)
                finished = bool(total) and done >= total  # a line as each file starts and ends
                lines.show(f"{name}: {_megabytes(done, total)}", key=f"{name} {finished}")

            try:
                found = store.pull(source.model_type, progress=report)
            except FailedPrecondition as exc:
                bar.stop()
                console.print(f"[red]error:[/red] {exc}")
                status = FAILED
                continue
        console.print(f"{source.model_type}: installed {found.sha256[:12]} from {found.url}")
    return status


def import_file(store, model: str, path: Path, console: Console) -> int:
    try:
        found = store.import_file(model, path)
    except FailedPrecondition as exc:
        console.print(f"[red]error:[/red] {exc}")
        return FAILED
    console.print(f"{model}: installed {found.sha256[:12]} from {path}")
    return OK
