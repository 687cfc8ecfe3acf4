"""``python -m services.converter``: run the converter."""

from __future__ import annotations

from services.converter.main import main

main()
