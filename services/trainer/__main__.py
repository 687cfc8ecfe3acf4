"""``python -m services.trainer``: run a trainer worker of one pool."""

from __future__ import annotations

from services.trainer.main import main

main()
