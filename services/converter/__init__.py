"""The converter service: trained checkpoint -> checked SavedModel in TF Serving's layout.

Service side, no TensorFlow: ``settings`` (ConverterSettings), ``service``
(build), ``handlers`` (handle_model_trained), ``fetch`` (the model prefix),
``samples`` (parity images), ``process`` (worker processes), ``parity`` (the
comparison), ``publish`` (upload, manifest, event).
Worker side, TensorFlow (``python -m services.converter.worker``): ``worker``,
``experiment`` (experiment.yaml -> config), ``module`` (ServingModule),
``export`` (checkpoint -> SavedModel / TFLite), ``check`` (fresh-process load).
"""
