"""preannotate's shared package: contracts, bus, storage, telemetry, settings.

Every service under services/ builds on the small modules here; no service
imports another. Importing this package does no work and imports no TensorFlow.
"""

__version__ = "0.1.0"
