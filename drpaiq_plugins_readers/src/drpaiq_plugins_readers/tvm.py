"""The ``tvm`` reader: input tensors recorded by the TVM flow (the reference's ``--tvm``).

Where the data comes from, in order:

1. Recorded tensors in the dataset folder: ``.npy`` files (one sample with the model's
   per-sample shape, or several stacked on a leading axis) and raw ``.bin`` files
   (the input's dtype, little-endian, a whole number of samples of the model's
   per-sample shape), in sorted file order.
2. Otherwise, images in that folder, read like ``nchw_image``/``nhwc_image`` with the
   layout the model's input shape shows (the channel axis of size 3).
3. Otherwise random frames (seeded, so every run is the same) for a functional check
   of the TVM flow, with a warning: ranges calibrated on noise mean nothing for
   accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, Reader, ReaderContext

from drpaiq_plugins_readers.common import (
    batch_size_for,
    format_shape,
    rebatch,
    resolve_shape,
    single_input,
    walk_files,
)
from drpaiq_plugins_readers.numpy_reader import npy_shape

log = logging.getLogger("drpaiq")

#: Random frames used when there is no recorded data and no size limit.
RANDOM_FRAMES = 8
#: The seed of the random frames (fixed: runs must be reproducible).
RANDOM_SEED = 20230101

_RECORDED = frozenset({".npy", ".bin"})


class TVMReader(Reader):
    """Recorded TVM input tensors (.npy/.bin), else images, else seeded random frames."""

    PLUGIN_NAME = "tvm"
    DESCRIPTION = "input tensors recorded by the TVM flow (.npy/.bin); random frames if none"

    def __init__(self, context: ReaderContext) -> None:
        super().__init__(context)
        if context.labeled:
            raise UserError(
                "reader tvm gives no class labels; evaluate with --nchw or --nhwc (image reader)"
            )
        self._spec = single_input(
            context, "tvm", "record .npz files keyed by input name and use --reader numpy"
        )
        self._shape = resolve_shape(self._spec, context.input_shape)
        self._batch = batch_size_for(self._shape, context)
        self._exact = bool(self._shape) and self._shape[0] is not None
        self._images: Reader | None = None
        self._files: list[tuple[Path, int]] = []
        folder = context.dataset
        if folder is not None and folder.is_dir():
            self._files = [(path, self._count(path)) for path in walk_files(folder, _RECORDED)]
            if not self._files:
                self._images = self._image_reader(folder)
        if not self._files and self._images is None:
            self._random_frames = context.size_limit or RANDOM_FRAMES
            self._sample_shape()  # a dynamic dimension must be known before noise is made
            context.warn(
                f"--tvm: no recorded input tensors (.npy/.bin) or images in "
                f"{folder if folder is not None else 'the calibration folder'}; calibrating "
                f"with {self._random_frames} seeded random frames as a functional check only: "
                "the ranges they give mean nothing for accuracy; record real inputs for "
                "calibration"
            )

    # -- sources -----------------------------------------------------------------

    def _sample_shape(self) -> tuple[int, ...]:
        rest = self._shape[1:]
        if any(dim is None for dim in rest):
            raise UserError(
                f"model input {self._spec.name!r} has dynamic dimensions "
                f"{format_shape(self._shape)}; pass the shape with --input-shape, "
                "e.g. --input-shape 1,3,224,224"
            )
        return tuple(int(dim) for dim in rest if dim is not None)

    def _count(self, path: Path) -> int:
        """Samples in one recorded file, from its header or size (nothing is loaded)."""
        if path.suffix.lower() == ".npy":
            shape = npy_shape(path)
            per_sample = self._shape[1:]
            if len(shape) == len(per_sample):
                return 1
            if len(shape) == len(per_sample) + 1:
                return int(shape[0])
            raise UserError(
                f"recorded tensor {path} has shape {list(shape)}; model input "
                f"{self._spec.name!r} wants {format_shape(self._shape)} (one sample, or "
                "several stacked on a leading axis)"
            )
        sample = self._sample_shape()
        sample_bytes = int(np.prod(sample)) * self._spec.dtype.itemsize
        size = path.stat().st_size
        if size == 0 or size % sample_bytes:
            raise UserError(
                f"raw tensor {path} has {size} bytes, not a whole number of "
                f"{self._spec.dtype} samples of shape {list(sample)} ({sample_bytes} bytes "
                "each); record it with the model's input shape and dtype"
            )
        return size // sample_bytes

    def _image_reader(self, folder: Path) -> Reader | None:
        from drpaiq_plugins_readers.images import (
            NCHWImageReader,
            NHWCImageReader,
            image_extensions,
        )

        if not walk_files(folder, image_extensions()):
            return None
        shape = self._shape
        nhwc = len(shape) == 4 and shape[3] == 3 and shape[1] != 3
        cls: type[NCHWImageReader] | type[NHWCImageReader] = (
            NHWCImageReader if nhwc else NCHWImageReader
        )
        log.info(f"--tvm: no recorded tensors in {folder}; reading its images as {cls.PLUGIN_NAME}")
        return cls(self.context)

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        if self._images is not None:
            return len(self._images)
        total = sum(count for _, count in self._files) if self._files else self._random_frames
        limit = self.context.size_limit
        return min(total, limit) if limit > 0 else total

    def batches(self) -> Iterator[Batch]:
        """Batches of recorded tensors, images or random frames (see the module doc)."""
        if self._images is not None:
            yield from self._images.batches()
            return
        source = self._recorded() if self._files else self._random()
        yield from rebatch(source, self._batch, exact=self._exact, warn=self.context.warn)

    def _recorded(self) -> Iterator[tuple[dict[str, np.ndarray], tuple[str, ...], Any]]:
        name, dtype = self._spec.name, self._spec.dtype
        remaining = self.context.size_limit or -1
        for path, count in self._files:
            if remaining == 0:
                return
            if path.suffix.lower() == ".npy":
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                if array.ndim == len(self._shape) - 1:
                    array = array[None]
                if array.dtype != dtype and not (array.dtype.kind == dtype.kind == "f"):
                    raise UserError(
                        f"recorded tensor {path} is {array.dtype}; model input "
                        f"{self._spec.name!r} wants {dtype}"
                    )
            else:
                array = np.fromfile(path, dtype=dtype.newbyteorder("<")).reshape(
                    (count, *self._sample_shape())
                )
            if remaining > 0:
                array = array[:remaining]
                remaining -= array.shape[0]
            array = np.ascontiguousarray(array, dtype=dtype)
            sources = tuple(f"{path}[{i}]" for i in range(array.shape[0]))
            yield {name: array}, sources, None

    def _random(self) -> Iterator[tuple[dict[str, np.ndarray], tuple[str, ...], Any]]:
        rng = np.random.default_rng(RANDOM_SEED)
        shape = self._sample_shape()
        dtype = self._spec.dtype
        for index in range(self._random_frames):
            if dtype.kind == "f":
                frame = rng.standard_normal(shape).astype(dtype)
            else:
                frame = rng.integers(0, 256, size=shape).astype(dtype)
            yield {self._spec.name: frame[None]}, (f"random frame {index}",), None
