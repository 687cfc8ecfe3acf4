"""Rebuild a model's experiment config from its ``experiment.yaml``.

The trainer writes the file with ``preannotate.vision.experiment.dump``; this
reads it back with ``preannotate.vision.experiment.read`` (which registers the
backbones Model Garden lacks first), so the converter builds exactly the model
that was trained. A file that does not load is the job's fault, not a retry's:
``InvalidArgument`` with the cause.

Imports TensorFlow (via official.vision): worker processes only.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from preannotate.errors import InvalidArgument


def load_params(path: Path):
    """The ``ExperimentConfig`` saved at ``path``, validated."""
    from preannotate.vision import experiment

    try:
        return experiment.read(path)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"experiment.yaml is not YAML: {exc}") from exc
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgument(
            f"experiment.yaml does not rebuild a detection experiment: {type(exc).__name__}: {exc}"
        ) from exc
