"""Which layers train in each Mask R-CNN stage.

Stage 1 ("heads"): the backbone is frozen; FPN, RPN and the box and mask heads
train. Stage 2 ("stage4+"): ResNet stage 4 and up train as well: the backbone's
layers up to the end of ``block_group_l3`` stay frozen (blocks are found by
position, between the ``block_group_l{k}`` layers that close each ResNet
stage; their own names are auto-numbered). Stage 3 ("all"): everything.
A frozen Keras layer also runs its BatchNorm in inference mode.
"""

from __future__ import annotations


def set_stage(model, trains: str) -> None:
    """Set ``trainable`` on ``model``'s backbone for the stage that trains ``trains``."""
    backbone = model.backbone
    if trains == "heads":
        backbone.trainable = False
        return
    backbone.trainable = True
    if trains == "all":
        return
    if trains != "stage4+":
        raise ValueError(f"unknown stage {trains!r}")
    names = [layer.name for layer in backbone.layers]
    if "block_group_l3" not in names:
        raise ValueError(
            "stage 2 freezes ResNet stages 1-3, and this backbone has no 'block_group_l3' layer"
        )
    frozen = True
    for layer in backbone.layers:
        layer.trainable = not frozen
        if layer.name == "block_group_l3":
            frozen = False


def stage_at(step: int, bounds: list[tuple[int, int, str]]) -> tuple[int, str]:
    """(stage number, trains) for the step about to run; ``bounds``: (number, end step, trains)."""
    for number, end, trains in bounds:
        if step < end:
            return number, trains
    number, _, trains = bounds[-1]
    return number, trains
