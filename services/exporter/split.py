"""The deterministic train/val split.

Each image's place follows from its file name alone: the first 8 bytes of
SHA-256("preannotate-split:" + file name) read as a fraction in [0, 1); the
image goes to val when that fraction is below ``val_fraction``. So an image
keeps its split across re-exports of a growing task, whatever else changes.

Then two fixes, both deterministic:
- val must hold at least one annotated image: when none fell there, the
  annotated training image with the lowest fraction moves to val;
- train must hold at least one annotated image: when none is left there, the
  annotated val image with the highest fraction moves to train.
Both together need at least two annotated images; fewer is ``InvalidArgument``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from preannotate.errors import InvalidArgument

TRAIN = "train"
VAL = "val"
_SALT = b"preannotate-split:"


def split_fraction(file_name: str) -> float:
    """A stable number in [0, 1) for ``file_name``."""
    digest = hashlib.sha256(_SALT + file_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    file_names: Sequence[str], annotated: Sequence[bool], val_fraction: float
) -> list[str]:
    """TRAIN or VAL for each image, in the order given."""
    if not 0 < val_fraction < 1:
        raise InvalidArgument(f"val fraction must be between 0 and 1, got {val_fraction}")
    if sum(annotated) < 2:
        raise InvalidArgument(
            f"a dataset needs at least 2 annotated images (one for training, one for "
            f"validation); this one has {sum(annotated)}: annotate more images"
        )
    fractions = [split_fraction(name) for name in file_names]
    splits = [VAL if f < val_fraction else TRAIN for f in fractions]

    def labelled(split: str) -> list[int]:
        return [i for i, s in enumerate(splits) if s == split and annotated[i]]

    if not labelled(VAL):
        splits[min(labelled(TRAIN), key=lambda i: (fractions[i], file_names[i]))] = VAL
    if not labelled(TRAIN):
        splits[max(labelled(VAL), key=lambda i: (fractions[i], file_names[i]))] = TRAIN
    return splits
