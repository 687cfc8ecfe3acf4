"""Entry point of the exporter: load the settings, run the service."""

from __future__ import annotations

from preannotate import runner
from preannotate.settings import load
from services.exporter.service import build
from services.exporter.settings import ExporterSettings


def main() -> None:
    settings = load(ExporterSettings)
    runner.run(build(settings), settings)


if __name__ == "__main__":
    main()
