"""``python -m services.inference``: run the inference service."""

from __future__ import annotations

from services.inference.main import main

main()
