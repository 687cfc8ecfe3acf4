"""Entry point of the inference service: load the settings, run the service."""

from __future__ import annotations

from preannotate import runner
from preannotate.settings import load
from services.inference.service import build
from services.inference.settings import InferenceSettings


def main() -> None:
    settings = load(InferenceSettings)
    runner.run(build(settings), settings)


if __name__ == "__main__":
    main()
