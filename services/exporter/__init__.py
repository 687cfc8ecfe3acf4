"""The exporter service: CVAT task -> COCO 1.0 export -> sharded TFRecords in storage.

Modules: ``settings`` (ExporterSettings), ``service`` (build), ``handlers``
(handle_task_annotated), ``source`` (CVAT, through ``preannotate.cvat``'s
export flow, or a local file), ``unpack`` (safe zip extraction), ``coco`` (reading the
export), ``convert`` (to TFRecords), ``examples``, ``masks``, ``split``,
``tfrecord``, ``labelmap``. No TensorFlow is imported here.
"""
