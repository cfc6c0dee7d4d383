"""Shared test fixtures."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_LOGGER = logging.getLogger("drpaiq")
_PRISTINE = (list(_LOGGER.handlers), _LOGGER.level, _LOGGER.propagate)


def _reset() -> None:
    _LOGGER.handlers[:] = list(_PRISTINE[0])
    _LOGGER.setLevel(_PRISTINE[1])
    _LOGGER.propagate = _PRISTINE[2]


@pytest.fixture(autouse=True)
def _pristine_drpaiq_logger() -> Iterator[None]:
    """In-process CLI runs (also in module-scoped fixtures) configure the 'drpaiq'
    logger; every test starts and ends with it as it was at start-up, so caplog-based
    tests see records regardless of test order."""
    _reset()
    yield
    _reset()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` for throwaway distributions; their modules are
    forgotten afterwards so that no test sees another's plugins."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(str(path)):
            del sys.modules[name]
