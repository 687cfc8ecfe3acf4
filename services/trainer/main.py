"""Entry point of the trainer: load the settings, run the service."""

from __future__ import annotations

from preannotate import runner
from preannotate.settings import load
from services.trainer.service import build
from services.trainer.settings import TrainerSettings


def main() -> None:
    settings = load(TrainerSettings)
    runner.run(build(settings), settings)


if __name__ == "__main__":
    main()
