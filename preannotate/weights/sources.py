"""Where each catalog model's starting weights come from: one entry per model type.

Every URL and hash below was read in a publication named by the entry's
``reference``; none is made up. Model Garden publishes no hash for its
checkpoints (``sha256`` None: the store pins the hash of the deployment's first
fetch and refuses a later file that differs). Keras Applications publishes an
MD5 (``file_hash`` of 32 hex digits, checked by ``get_file`` as MD5), kept in
``md5`` and checked too. No COCO detector that matches one of our
architectures is published (Model Garden's COCO checkpoints are RetinaNet
ResNet-50-FPN and SpineNet models; its MobileNetV2 RetinaNet and ResNet-FPN
Mask R-CNN rows link a config only), so every entry is an ImageNet backbone.
docs/weights.md lists them with their references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from preannotate.errors import InvalidArgument

Covers = Literal["backbone", "backbone+decoder", "detector"]
Format = Literal["tf-checkpoint", "keras-h5"]
Dataset = Literal["coco", "imagenet"]

_MG_LICENCE = (
    "Apache-2.0 (tensorflow/models; no separate licence is stated for the checkpoint; "
    "the README asks users to review the terms of the training data set)"
)
_KERAS_LICENCE = (
    "not stated in the source file (tf-keras itself is Apache-2.0); "
    "the weights were trained on ImageNet, whose terms apply"
)


@dataclass(frozen=True)
class WeightsSource:
    """One model type's published starting weights."""

    model_type: str
    #: The official download URL. For a checkpoint published as loose files it is
    #: the ``.index`` file's; ``data_files`` names the shards beside it.
    url: str
    #: The publisher's sha256 of the file; None when none is published.
    sha256: str | None
    covers: Covers
    format: Format
    dataset: Dataset
    licence: str
    #: The page/file where the URL (and hash) was read.
    reference: str
    #: For tf-checkpoint archives: the checkpoint prefix inside the archive
    #: (e.g. "ckpt-33264") when the publication says it; None: the archive's
    #: single ``*.index`` names it.
    checkpoint: str | None = None
    #: For a checkpoint published as loose files (``url`` ends in ``.index``):
    #: the names of its data shards, fetched from the same folder.
    data_files: tuple[str, ...] = ()
    #: The publisher's MD5 of the file, where that is what is published.
    md5: str | None = None
    #: One line: what the file is and how it maps onto our model.
    note: str = ""

    @property
    def file_name(self) -> str:
        """The published file's name: what a mirror serves it as."""
        return self.url.rsplit("/", 1)[-1]


_MOBILENET_V2 = "https://storage.googleapis.com/tf_model_garden/vision/mobilenet/v2_1.0_float/"
_RESNET50 = "https://storage.googleapis.com/cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _resnet50(model_type: str) -> WeightsSource:
    return WeightsSource(
        model_type=model_type,
        url=_RESNET50 + "ckpt-28080.index",
        data_files=("ckpt-28080.data-00000-of-00001",),
        sha256=None,
        covers="backbone",
        format="tf-checkpoint",
        dataset="imagenet",
        licence=_MG_LICENCE,
        reference=(
            "tensorflow/models official/vision/configs/maskrcnn.py: fasterrcnn_resnetfpn_coco "
            "and maskrcnn_resnetfpn_coco set init_checkpoint="
            "'gs://cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/ckpt-28080', "
            "init_checkpoint_modules='backbone' (gs:// read over https://storage.googleapis.com/); "
            "shard name: HabanaAI/Model-References TensorFlow/computer_vision/RetinaNet README "
            "(wget of checkpoint, ckpt-28080.data-00000-of-00001, ckpt-28080.index)"
        ),
        note="Model Garden ResNet-50 ImageNet backbone, the start of Model Garden's own "
        "Faster/Mask R-CNN ResNet-FPN recipes",
    )


_SOURCES = (
    WeightsSource(
        model_type="ssd-mobilenet-v2-coco",
        url=_MOBILENET_V2 + "ckpt-180648.index",
        data_files=("ckpt-180648.data-00000-of-00001",),
        sha256=None,
        covers="backbone",
        format="tf-checkpoint",
        dataset="imagenet",
        licence=_MG_LICENCE,
        reference=(
            "tensorflow/models docs/vision/instance_segmentation.ipynb: gsutil cp "
            "gs://tf_model_garden/vision/mobilenet/v2_1.0_float/ckpt-180648.data-00000-of-00001 "
            "and .index, then init_checkpoint='./model_ckpt/ckpt-180648', "
            "init_checkpoint_modules='backbone' (gs:// read over https://storage.googleapis.com/); "
            "no COCO checkpoint: official/vision/README.md's Mobile-size RetinaNet MobileNetv2 "
            "row links a config only"
        ),
        note="Model Garden MobileNetV2 (1.0, float) backbone; the tutorial loads it as the "
        "backbone of a MobileNetV2 detector. The tutorial does not name its data set: ImageNet "
        "is inferred from the v2_1.0_float folder of Model Garden's ImageNet MobileNetV2 models",
    ),
    _resnet50("frcnn-res50-coco"),
    _resnet50("frcnn-res50-lowp"),
    WeightsSource(
        model_type="frcnn-res101-coco",
        url="https://storage.googleapis.com/tf_model_garden/vision/resnet/resnet-101-i224.tar.gz",
        sha256=None,
        covers="backbone",
        format="tf-checkpoint",
        dataset="imagenet",
        licence=_MG_LICENCE,
        reference=(
            "tensorflow/models official/vision/README.md, 'ResNet models trained with vanilla "
            "settings': ResNet-101 224x224, 200 epochs, top-1 78.3, ckpt link"
        ),
        note="a Model Garden image-classification checkpoint (ResNet-101, ImageNet); its "
        "backbone is Model Garden's ResNet, the same class as ours",
    ),
    WeightsSource(
        model_type="frcnn-inc-resv2-atr-coco",
        url=_KERAS
        + "inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        sha256=None,
        md5="d19885ff4a710c122648d3b5c3b684e4",
        covers="backbone",
        format="keras-h5",
        dataset="imagenet",
        licence=_KERAS_LICENCE,
        reference=(
            "keras-team/tf-keras tf_keras/src/applications/inception_resnet_v2.py (tf_keras "
            "2.20.1): BASE_WEIGHT_URL + the notop file name, file_hash "
            "d19885ff4a710c122648d3b5c3b684e4 (32 hex digits: get_file checks it as MD5)"
        ),
        note="Keras Applications InceptionResNetV2(include_top=False) ImageNet weights: the "
        "network preannotate.vision.backbones builds",
    ),
    WeightsSource(
        model_type="frcnn-nas-coco",
        url=_KERAS + "nasnet/NASNet-large-no-top.h5",
        sha256=None,
        md5="d81d89dc07e6e56530c4e77faddd61b5",
        covers="backbone",
        format="keras-h5",
        dataset="imagenet",
        licence=_KERAS_LICENCE,
        reference=(
            "keras-team/tf-keras tf_keras/src/applications/nasnet.py (tf_keras 2.20.1): "
            "NASNET_LARGE_WEIGHT_PATH_NO_TOP, file_hash d81d89dc07e6e56530c4e77faddd61b5 "
            "(32 hex digits: get_file checks it as MD5)"
        ),
        note="Keras Applications NASNetLarge(include_top=False) ImageNet weights: the network "
        "preannotate.vision.backbones builds",
    ),
    _resnet50("maskrcnn"),
)


def sources() -> list[WeightsSource]:
    """Every entry, in the catalog's order."""
    return list(_SOURCES)


def source_for(model_type: str) -> WeightsSource:
    """The entry of ``model_type``; ``InvalidArgument`` lists the model types that have one."""
    for source in _SOURCES:
        if source.model_type == model_type:
            return source
    raise InvalidArgument(
        f"no pretrained weights are known for model type {model_type!r}; "
        f"known: {', '.join(s.model_type for s in _SOURCES)}"
    )
