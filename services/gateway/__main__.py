"""``python -m services.gateway``: run the gateway."""

from __future__ import annotations

from services.gateway.main import main

main()
