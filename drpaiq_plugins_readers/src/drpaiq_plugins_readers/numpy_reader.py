"""The ``numpy`` reader: ``.npz``/``.npy`` files keyed by input name.

For models whose inputs are not images, or that have several inputs. The dataset is
one file or a folder of files (taken in sorted order):

- ``.npz``: one array per model input, stored under the input's name (extra arrays
  are ignored with a warning);
- ``.npy``: for single-input models only, the array of that input.

An array with the input's rank holds several samples on its leading axis; an array
with one dimension less holds one sample. Float arrays are cast to the input's float
type (float64 -> float32); any other mismatch is reported by the core's check of
every batch against the model.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, InputSpec, Reader, ReaderContext

from drpaiq_plugins_readers.common import batch_size_for, format_shape, rebatch, walk_files

_SUFFIXES = frozenset({".npy", ".npz"})


def _read_header(handle: Any) -> tuple[int, ...]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    return tuple(int(d) for d in shape)


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape stored in a ``.npy`` file's header (the data is not read)."""
    try:
        with open(path, "rb") as handle:
            return _read_header(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable .npy file ({exc})") from None


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of a ``.npz`` file, from the member headers only."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    shapes[member[: -len(".npy")]] = _read_header(handle)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable .npz file ({exc})") from None
    return shapes


class NumpyReader(Reader):
    """Arrays from ``.npz`` (keyed by input name) or ``.npy`` (single input) files."""

    PLUGIN_NAME = "numpy"
    DESCRIPTION = ".npz files keyed by input name (or .npy for one input); any model"

    def __init__(self, context: ReaderContext) -> None:
        super().__init__(context)
        if context.labeled:
            raise UserError(
                "reader numpy gives no class labels; evaluate with --nchw or --nhwc (image reader)"
            )
        self._inputs = list(context.inputs)
        if not self._inputs:
            raise UserError("the model has no inputs to feed")
        dataset = context.dataset
        if dataset is None:
            raise UserError("reader numpy needs data: pass --calibrate_dataset FILE.npz or DIR")
        if not dataset.exists():
            raise UserError(
                f"{dataset} does not exist; pass --calibrate_dataset with a .npz/.npy file or "
                "a folder of them"
            )
        if dataset.is_dir():
            self._files = walk_files(dataset, _SUFFIXES)
            if not self._files:
                raise UserError(f"folder {dataset} has no .npz or .npy files for reader numpy")
        elif dataset.suffix.lower() in _SUFFIXES:
            self._files = [dataset]
        else:
            raise UserError(f"{dataset} is not a .npz or .npy file (reader numpy)")
        first = self._inputs[0].shape
        self._batch = batch_size_for(first, context)
        self._exact = bool(first) and first[0] is not None
        self._counts = [self._count(path) for path in self._files]
        self._warned_extra: set[Path] = set()

    def _shapes(self, path: Path) -> dict[str, tuple[int, ...]]:
        if path.suffix.lower() == ".npz":
            return npz_shapes(path)
        if len(self._inputs) != 1:
            names = ", ".join(spec.name for spec in self._inputs)
            raise UserError(
                f"{path} is a .npy file but the model has {len(self._inputs)} inputs ({names}); "
                "save one .npz per sample set with one array per input name (numpy.savez)"
            )
        return {self._inputs[0].name: npy_shape(path)}

    def _count(self, path: Path) -> int:
        shapes = self._shapes(path)
        counts = set()
        for spec in self._inputs:
            if spec.name not in shapes:
                keys = ", ".join(sorted(shapes)) or "none"
                raise UserError(
                    f"{path} has no array for model input {spec.name!r} (its arrays: {keys}); "
                    "store each input under its name"
                )
            counts.add(self._samples_in(spec, shapes[spec.name], path))
        if len(counts) != 1:
            raise UserError(
                f"{path}: the inputs hold different numbers of samples ({sorted(counts)}); "
                "give every input the same leading axis"
            )
        return counts.pop()

    @staticmethod
    def _samples_in(spec: InputSpec, shape: tuple[int, ...], path: Path) -> int:
        rank = len(spec.shape)
        if not spec.shape or len(shape) == rank:
            return int(shape[0]) if shape else 1
        if len(shape) == rank - 1:
            return 1
        raise UserError(
            f"{path}: array {spec.name!r} has shape {list(shape)}; model input {spec.name!r} "
            f"wants {format_shape(spec.shape)} (one sample, or several on a leading axis)"
        )

    def __len__(self) -> int:
        total = sum(self._counts)
        limit = self.context.size_limit
        return min(total, limit) if limit > 0 else total

    def batches(self) -> Iterator[Batch]:
        """Batches of the files' arrays, keyed by input name, in file order."""
        yield from rebatch(self._chunks(), self._batch, exact=self._exact, warn=self.context.warn)

    def _chunks(self) -> Iterator[tuple[dict[str, np.ndarray], tuple[str, ...], Any]]:
        remaining = self.context.size_limit or -1
        for path, count in zip(self._files, self._counts):
            if remaining == 0:
                return
            feeds = self._load(path)
            if remaining > 0:
                feeds = {k: v[:remaining] for k, v in feeds.items()}
                count = min(count, remaining)
                remaining -= count
            sources = tuple(f"{path}[{i}]" for i in range(count))
            yield feeds, sources, None

    def _load(self, path: Path) -> dict[str, np.ndarray]:
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    names = set(archive.files)
                    feeds = {spec.name: archive[spec.name] for spec in self._inputs}
            else:
                names = {self._inputs[0].name}
                feeds = {self._inputs[0].name: np.load(path, allow_pickle=False)}
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        extra = sorted(names - {spec.name for spec in self._inputs})
        if extra and path not in self._warned_extra:
            self._warned_extra.add(path)
            self.context.warn(f"{path}: arrays {', '.join(extra)} are not model inputs; ignored")
        out = {}
        for spec in self._inputs:
            array = feeds[spec.name]
            if spec.shape and array.ndim == len(spec.shape) - 1:
                array = array[None]
            elif not spec.shape and array.ndim == 0:
                array = array.reshape(1)
            if array.dtype != spec.dtype and array.dtype.kind == spec.dtype.kind == "f":
                array = array.astype(spec.dtype)
            out[spec.name] = np.ascontiguousarray(array)
        return out
