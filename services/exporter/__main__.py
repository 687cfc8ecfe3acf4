"""``python -m services.exporter``: run the exporter."""

from __future__ import annotations

from services.exporter.main import main

main()
