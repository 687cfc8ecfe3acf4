"""``preannotate annotate`` with stdout not a terminal: plain progress lines."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from preannotate.cli import inference as cli
from tests.inference.test_cli import address  # noqa: F401 - the served InferenceService
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf


async def test_annotate_into_a_log_prints_plain_lines(address, cvat):  # noqa: F811
    images, _ = make_shapes_dataset(6, size=(160, 120), seed=101)
    task_id = cvat.add_task("t", labels=shapes_labels(("circle",)), images=images)
    cvat.break_frame(task_id, 2)
    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    code = await cli.annotate_async(
        task=task_id,
        model="shapes",
        threshold=0.5,
        replace=True,
        connection=cli.Connection(address),
        console=console,
    )
    text = console.file.getvalue()
    assert code == cli.OK, text
    line = re.compile(
        rf"^task {task_id} \((\S+)\): (\d+)/6 frames, (\d+) shapes(, 1 skipped)?(, done)?, "
        r"\d+ s elapsed$"
    )
    progress = [m for m in map(line.match, text.splitlines()) if m]
    assert len(progress) >= 2, text  # the first report and the last
    written = len(cvat.annotations(task_id))
    assert progress[-1].group(2, 3, 4, 5) == ("6", str(written), ", 1 skipped", ", done"), text
    assert "━" not in text
