"""One train → convert → pre-annotate loop on this machine, for any dataset.

``run_embedded`` starts the five services in one process (the embedded mode,
a memory bus, local storage under ``work/storage``), feeds ``train_source``
through export, training and conversion, pre-annotates ``target`` and returns
the loop (with its timings) and the events that ended it. The quickstart
(``preannotate quickstart``) and the recipe benchmark (``bench/recipe.py``)
both drive it; they differ only in the data they make.
"""

from __future__ import annotations

import logging
from pathlib import Path

from preannotate.v1 import common_pb2


def work_overrides(work: Path, namespace: str) -> dict:
    """Settings of an embedded deployment in ``work``: free ports, JSON logs, work folders."""
    return {
        "gateway_grpc_port": 0,
        "gateway_http_port": 0,
        "inference_grpc_port": 0,
        "nuclio_port": 0,
        "metrics_port": 0,
        "log_format": "json",
        "export_work_dir": work / "exporter",
        "trainer_work_dir": work / "trainer",
        "convert_work_dir": work / "converter",
        "inference_model_cache_dir": work / "models",
        "namespace": namespace,
    }


async def run_embedded(
    work: Path,
    train_source: common_pb2.CvatRef,
    target: common_pb2.CvatRef,
    *,
    model_type: str,
    arguments: str,
    threshold: float,
    timeout: float,
    console,
    cvat: dict | None = None,
    model_name: str = "shapes",
    progress: str = "",
):
    """Train ``model_type`` by ``arguments`` on ``train_source``, pre-annotate ``target``.

    Logs go to ``work/quickstart.log``; returns ``(loop, {"converted", "preannotated"})``.
    ``progress``: bar, plain or none (``preannotate.cli.display.choose``).
    """
    from preannotate.bus import MemoryBus
    from preannotate.cli.up import embedded_settings
    from preannotate.quickstart.flow import Loop, run_loop
    from preannotate.runner import Runtime
    from preannotate.telemetry.logging import configure

    work = Path(work)
    log_file = open(work / "quickstart.log", "a")  # noqa: SIM115 - the logs' stream from now on
    configure("quickstart", "info", "json", stream=log_file)
    logging.captureWarnings(True)  # library warnings go to the log file, not the console
    overrides = {**work_overrides(work, "quickstart"), **(cvat or {})}
    runtime = Runtime(embedded_settings(work / "storage", **overrides), bus=MemoryBus())
    await runtime.start()
    try:
        loop = Loop(
            namespace="quickstart",
            model_name=model_name,
            model_type=model_type,
            arguments=arguments,
            train_source=train_source,
            annotate_target=target,
            threshold=threshold,
        )
        result = await run_loop(runtime, loop, console, timeout, progress=progress)
    finally:
        await runtime.stop()
        log_file.flush()
    return loop, result
