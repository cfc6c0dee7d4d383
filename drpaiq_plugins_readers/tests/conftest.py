"""Fixtures of the reader tests: contexts for a model input, image files on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from drpaiq_core.plugin_api import InputSpec, ReaderContext
from PIL import Image


class Warnings(list):
    """Collects the lines a reader passes to ``context.warn``."""

    def __call__(self, message: str) -> None:
        self.append(message)


@pytest.fixture
def warnings_seen() -> Warnings:
    return Warnings()


@pytest.fixture
def make_context(warnings_seen: Warnings) -> Callable[..., ReaderContext]:
    """``make_context(dataset, shape=(None, 3, 8, 8), name="input", **fields)``."""

    def make(
        dataset: Path | None,
        shape: tuple[int | None, ...] = (None, 3, 8, 8),
        name: str = "input",
        inputs: list[InputSpec] | None = None,
        **fields: Any,
    ) -> ReaderContext:
        specs = inputs or [InputSpec(name, shape, np.dtype(np.float32))]
        fields.setdefault("norm_mean", (0.0, 0.0, 0.0))
        fields.setdefault("norm_std", (1.0, 1.0, 1.0))
        return ReaderContext(
            dataset=dataset, model_path=None, inputs=specs, warn=warnings_seen, **fields
        )

    return make


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, pixels_or_color, size=(8, 8), mode="RGB")``: one image file."""

    def write(
        path: Path,
        color: Any = (10, 20, 30),
        size: tuple[int, int] = (8, 8),
        mode: str = "RGB",
        **save: Any,
    ) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(color, np.ndarray):
            image = Image.fromarray(color)
        else:
            image = Image.new(mode, size, color)
        image.save(path, **save)
        return path

    return write
