"""Model Garden experiment configs: the re-typed base, and experiment.yaml.

``base(name)`` starts from a registered Model Garden experiment
(``retinanet_mobile_coco``, ``fasterrcnn_resnetfpn_coco``, ...) and re-types
its task to this package's config classes, so it can hold the extra backbones.
``dump(params)`` writes the whole experiment as YAML (``experiment.yaml`` of a
model version); ``load(text)`` rebuilds exactly that experiment under strict
override, which is how the converter rebuilds the model it exports. The family
is read from the YAML itself (an R-CNN task has ``rpn_head``), so the file
needs nothing beside it.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from preannotate.vision.registry import register


def _task_class_for(task: Any) -> type:
    from official.vision.configs import maskrcnn, retinanet

    from preannotate.vision import configs

    if isinstance(task, retinanet.RetinaNetTask):
        return configs.RetinaNetTask
    if isinstance(task, maskrcnn.MaskRCNNTask):
        return configs.MaskRCNNTask
    raise ValueError(f"no preannotate task config for {type(task).__name__}")


def base(experiment: str):
    """The Model Garden experiment ``experiment``, with its task re-typed; not locked.

    A fresh copy each call (built once per process: Model Garden's configs are slow
    to construct).
    """
    return copy.deepcopy(_base(experiment))


@functools.cache
def _base(experiment: str):
    register()
    from official.core import config_definitions as cfg
    from official.core import exp_factory

    stock = exp_factory.get_exp_config(experiment)
    task = _task_class_for(stock.task)()
    task.override(stock.task.as_dict(), is_strict=True)
    return cfg.ExperimentConfig(
        task=task,
        trainer=stock.trainer,
        runtime=stock.runtime,
        restrictions=list(stock.restrictions or []),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump(params) -> str:
    """The experiment as YAML text."""
    return yaml.safe_dump(_plain(params.as_dict()), sort_keys=True, default_flow_style=False)


def load(text: str):
    """The experiment that ``dump`` wrote, rebuilt under strict override and validated."""
    register()
    from official.core import config_definitions as cfg

    from preannotate.vision import configs

    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("task"), dict):
        raise ValueError("experiment YAML has no 'task' section")
    model = data["task"].get("model") or {}
    task_cls = configs.MaskRCNNTask if "rpn_head" in model else configs.RetinaNetTask
    params = cfg.ExperimentConfig(task=task_cls())
    params.override(data, is_strict=True)
    params.validate()
    return params


def editable_copy(params):
    """An unlocked, typed copy of ``params`` to change (``load`` of its ``dump``)."""
    return load(dump(params))


def save(params, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(dump(params))
    return path


def read(path: str | Path):
    return load(Path(path).read_text())
