"""Fixtures of the platform tests: a ``Pipeline`` of stage processes on the real broker."""

from __future__ import annotations

import pytest

from tests.platform.buses import kafka_settings
from tests.platform.stage_process import Pipeline


@pytest.fixture
async def pipeline(kafka_bootstrap, tmp_path):
    """Stage processes (started by the test) with the topics created and a status view."""
    p = Pipeline(kafka_bootstrap, tmp_path)
    await p.open(kafka_settings(kafka_bootstrap, kafka_topic_prefix=p.prefix))
    yield p
    await p.close()
