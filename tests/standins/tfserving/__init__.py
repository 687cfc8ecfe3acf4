"""A TF Serving stand-in for tests: ModelService and PredictionService over real
SavedModels, with tensorflow-serving-api's messages (see ``server``)."""

from __future__ import annotations

from .server import AVAILABLE, END, LOADING, START, TfServingStandIn

__all__ = ["AVAILABLE", "END", "LOADING", "START", "TfServingStandIn"]
