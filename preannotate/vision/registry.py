"""``register()``: make this package's backbones and task configs known to Model Garden.

Model Garden looks backbones up by ``backbone.type`` and task classes by the
exact task config class, in registries that refuse a second registration.
``register()`` fills them once per process (it is idempotent and thread-safe);
every process that builds a model calls it: the trainer and the converter.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_done = False


def register() -> None:
    """Register the extra backbones and task classes with Model Garden, once."""
    global _done
    with _lock:
        if _done:
            return
        # Model Garden's own experiments, tasks and backbones.
        from official.core import task_factory
        from official.vision import registry_imports  # noqa: F401
        from official.vision.modeling.backbones import factory
        from official.vision.tasks import maskrcnn

        from preannotate.vision import backbones, configs, crops

        factory.register_backbone_builder(configs.INCEPTION_RESNET_V2)(
            backbones.build_inception_resnet_v2
        )
        factory.register_backbone_builder(configs.NASNET)(backbones.build_nasnet)
        task_factory.register_task_cls(configs.RetinaNetTask)(crops.RetinaNetTask)
        task_factory.register_task_cls(configs.MaskRCNNTask)(maskrcnn.MaskRCNNTask)
        _done = True
