"""The reference tool's calibration readers, ``NCHWDataReader`` and ``NHWCDataReader``.

They follow ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next()`` returns a
dict input name -> array, then None), are constructed like the reference's
``Cls(calibration_image_folder, norm_mean, norm_std, augmented_model_path)``, honour
the ``size_limit`` attribute (0 = all) and call ``preprocess_func`` to turn a folder
into arrays, so a user's subclass that overrides it (padding instead of stretching,
another normalization) works unchanged.

Unlike the reference, images are decoded one at a time as ``get_next`` asks for them
(memory does not grow with the folder), and ``rewind()`` starts a new pass.

This module imports ONNX Runtime (the base class); drpaiq imports it only when one of
these classes is asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from drpaiq_core.errors import UserError
from onnxruntime.quantization import CalibrationDataReader

from drpaiq_plugins_readers.common import format_shape, walk_files
from drpaiq_plugins_readers.images import (
    ImageError,
    check_norm,
    image_extensions,
    load_rgb,
    normalize,
)

log = logging.getLogger("drpaiq")

__all__ = ["NCHWDataReader", "NHWCDataReader"]


class _ReferenceImageReader(CalibrationDataReader):
    """Images of a folder as ``get_next()`` feeds, one image per call."""

    LAYOUT = "NCHW"

    def __init__(
        self,
        calibration_image_folder: str | os.PathLike[str],
        norm_mean: Iterable[float],
        norm_std: Iterable[float],
        augmented_model_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.image_folder = calibration_image_folder
        self.norm_mean = check_norm(norm_mean, "norm_mean")
        self.norm_std = check_norm(norm_std, "norm_std", nonzero=True)
        self.augmented_model_path = augmented_model_path
        #: Use at most this many images; 0 means all of them.
        self.size_limit = 0
        #: ``(N, C, H, W)``/``(N, H, W, C)`` to use when the model's H or W is dynamic.
        self.input_shape: tuple[int, ...] | None = None
        self.preprocess_flag = True
        self.enum_data_dicts: Iterator[dict[str, np.ndarray]] | None = None
        self.datasize = 0
        folder = Path(calibration_image_folder)
        if not folder.is_dir():
            raise UserError(f"calibration image folder {folder} does not exist or is not a folder")

    # -- the CalibrationDataReader protocol ------------------------------------

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next image's feed ``{input name: array with batch axis 1}``, or None."""
        if self.preprocess_flag:
            self.preprocess_flag = False
            name, height, width, rank = self._model_input()
            self.datasize = len(self)
            items = self.preprocess_func(
                self.image_folder, height, width, size_limit=self.size_limit
            )
            self.enum_data_dicts = (
                {name: _with_batch_axis(np.asarray(item), rank)} for item in items
            )
        assert self.enum_data_dicts is not None
        return next(self.enum_data_dicts, None)

    def rewind(self) -> None:
        """Start again from the first image (a second calibration pass)."""
        self.preprocess_flag = True
        self.enum_data_dicts = None

    def __len__(self) -> int:
        count = len(self._image_files())
        return min(count, self.size_limit) if self.size_limit > 0 else count

    # -- overridable -------------------------------------------------------------

    def preprocess_func(
        self, images_folder: str | os.PathLike[str], height: int, width: int, size_limit: int = 0
    ) -> Iterable[np.ndarray]:
        """The images of ``images_folder`` as normalized float32 arrays of shape
        ``(1, 3, height, width)`` (NCHW) or ``(1, height, width, 3)`` (NHWC), in sorted
        file order, at most ``size_limit`` of them (0 = all). Override to change the
        preprocessing; returning a list or a generator both work."""
        used = 0
        for path in self._image_files(Path(images_folder)):
            if size_limit > 0 and used >= size_limit:
                return
            try:
                rgb = load_rgb(path, width, height)
            except ImageError as exc:
                log.warning(f"skipping image {path}: {exc}")
                continue
            used += 1
            yield normalize(rgb, self.norm_mean, self.norm_std, self.LAYOUT)[None]
        if used == 0:
            raise UserError(f"no readable image in {images_folder}")

    # -- helpers -------------------------------------------------------------------

    def _image_files(self, folder: Path | None = None) -> list[Path]:
        folder = folder if folder is not None else Path(self.image_folder)
        files = walk_files(folder, image_extensions())
        if not files:
            raise UserError(f"calibration image folder {folder} has no image files (JPG/PNG/BMP)")
        return files

    def _model_input(self) -> tuple[str, int, int, int]:
        import onnx
        from drpaiq_core.load import model_inputs

        if self.augmented_model_path is None:
            raise UserError(
                f"{type(self).__name__} needs the model path (4th argument) to read the input size"
            )
        path = Path(self.augmented_model_path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise UserError(f"cannot read model {path} for its input size: {exc}") from None
        inputs = model_inputs(model)
        if not inputs:
            raise UserError(f"model {path} has no inputs")
        spec = inputs[0]
        shape = list(spec.shape)
        if len(shape) != 4:
            raise UserError(
                f"{type(self).__name__} needs a 4-D image input; model input {spec.name!r} is "
                f"{format_shape(spec.shape)}"
            )
        if self.input_shape is not None:
            shape = [given if dim is None else dim for dim, given in zip(shape, self.input_shape)]
        height, width = (shape[2], shape[3]) if self.LAYOUT == "NCHW" else (shape[1], shape[2])
        if height is None or width is None:
            raise UserError(
                f"model input {spec.name!r} has a dynamic height or width "
                f"{format_shape(spec.shape)}; set reader.input_shape = (1, ...) with the size "
                "to use, or pass --input-shape"
            )
        return spec.name, int(height), int(width), 4


def _with_batch_axis(array: np.ndarray, rank: int) -> np.ndarray:
    # An override of preprocess_func may yield samples without the batch axis.
    return array[None] if array.ndim == rank - 1 else array


class NCHWDataReader(_ReferenceImageReader):
    """Calibration images, channels first (PyTorch models); see the module doc."""

    LAYOUT = "NCHW"


class NHWCDataReader(_ReferenceImageReader):
    """Calibration images, channels last (Keras models); see the module doc."""

    LAYOUT = "NHWC"
