"""Shared test fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_drpaiq_logger() -> Iterator[None]:
    """In-process CLI runs configure the 'drpaiq' logger; undo that after each test so
    caplog-based tests see records regardless of test order."""
    logger = logging.getLogger("drpaiq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
