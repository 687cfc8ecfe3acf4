"""``python -m preannotate``: the same as the ``preannotate`` command."""

from __future__ import annotations

import sys

from preannotate.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
