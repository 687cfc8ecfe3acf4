"""Shared TF Model Garden code for the processes that build models (trainer, converter).

Importing this package imports nothing heavy; its modules import TensorFlow and
``official.vision``, so import them only where a model is built:

- ``preannotate.vision.registry.register()``: registers, once per process, the
  Inception-ResNet-v2 and NASNet backbones as Model Garden backbones and the
  task classes of this package's task configs. Call it before building any
  model (``experiment.base()`` and ``experiment.load()`` call it for you).
- ``preannotate.vision.configs``: the config classes (a ``Backbone`` with the
  two extra backbones, and the RetinaNet / Mask R-CNN model and task configs
  re-typed to hold it).
- ``preannotate.vision.experiment``: ``base(name)`` (a Model Garden experiment
  re-typed to this package's classes), ``dump(params)`` / ``load(text)`` of
  ``experiment.yaml``, so the converter rebuilds exactly the trained model.
- ``preannotate.vision.backbones``: the two backbone builders.
- ``preannotate.vision.crops``: Model Garden's RetinaNet task with training crops
  centred on objects (the parser's ``crop_objects``).
"""
