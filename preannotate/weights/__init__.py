"""Pretrained starting weights of the catalog's model types (issue 10).

``sources`` says where each model type's weights come from (URL, hash,
what they cover, the publication they were read in); ``store`` fetches them
once per deployment into storage under ``weights/<model-type>/`` and reads
them back; ``fetch`` and ``files`` hold the download and the local unpacking.
docs/weights.md lists every entry.
"""

from __future__ import annotations

from preannotate.weights.sources import WeightsSource, source_for, sources
from preannotate.weights.store import Installed, WeightsStore

__all__ = ["Installed", "WeightsSource", "WeightsStore", "source_for", "sources"]
