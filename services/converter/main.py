"""Entry point of the converter: load the settings, run the service."""

from __future__ import annotations

from preannotate import runner
from preannotate.settings import load
from services.converter.service import build
from services.converter.settings import ConverterSettings


def main() -> None:
    settings = load(ConverterSettings)
    runner.run(build(settings), settings)


if __name__ == "__main__":
    main()
