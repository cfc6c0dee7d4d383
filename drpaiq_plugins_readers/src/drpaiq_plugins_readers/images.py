"""The image-folder readers ``nchw_image`` and ``nhwc_image``.

Every image goes through the same steps as in the reference tool's sample readers:
decode (any format Pillow opens), convert to RGB, resize to the model's H x W, scale
to [0, 1], subtract ``norm_mean``, divide by ``norm_std``, lay out as NCHW or NHWC in
float32. Pillow is imported only when an image is read.

Decisions worth knowing:

- Files are taken in sorted order of their path relative to the folder (sub-folders
  included), so runs are reproducible on any file system. In a labeled folder (one
  sub-folder per class, for evaluation) the classes take turns, so that a
  ``size_limit`` subset keeps them balanced.
- Gray, gray+alpha, palette, RGBA and CMYK images become RGB (alpha is dropped, as
  Pillow's ``convert("RGB")`` does); 16-bit gray images are scaled by 65535, not
  clipped at 255.
- Resizing uses Pillow's bicubic filter (its default for ``Image.resize``); images
  already at H x W are not resampled.
- A file that cannot be decoded, or that exceeds Pillow's decompression-bomb limit
  (the protection stays on), is skipped with a warning naming it; only a folder in
  which no image is left is an error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, Reader, ReaderContext

from drpaiq_plugins_readers.common import (
    batch_size_for,
    format_shape,
    rebatch,
    require_folder,
    resolve_shape,
    single_input,
    walk_files,
)

#: Extensions Pillow registers but cannot decode without extra software, or that are
#: rarely images in a data set (model files, videos); they are not listed as images.
_NOT_IMAGES = frozenset(
    {".h5", ".hdf", ".bufr", ".grib", ".mpeg", ".mpg", ".emf", ".wmf", ".eps", ".ps"}
)

#: 16-bit (and 32-bit integer) single-channel modes, scaled by 65535.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageError(Exception):
    """An image file that cannot be used; the message says why."""


def image_extensions() -> frozenset[str]:
    """Lower-case file suffixes (with the dot) of the formats Pillow can open here."""
    from PIL import Image

    Image.init()
    return frozenset(
        ext
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and ext not in _NOT_IMAGES
    )


def check_norm(values: Any, name: str, *, nonzero: bool = False) -> tuple[float, float, float]:
    """``values`` as three finite floats (R, G, B), else a :class:`UserError`."""
    try:
        items = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(
            f"{name} must be 3 numbers (R,G,B), e.g. [0.485,0.456,0.406]; got {values!r}"
        ) from None
    if len(items) != 3:
        raise UserError(
            f"{name} must be 3 numbers (R,G,B), one per channel; got {len(items)}: "
            f"{', '.join(f'{v:g}' for v in items) or 'none'}"
        )
    if not all(math.isfinite(v) for v in items):
        raise UserError(f"{name} must be finite numbers; got {', '.join(f'{v:g}' for v in items)}")
    if nonzero and any(v == 0.0 for v in items):
        raise UserError(f"{name} must not contain 0 (it divides the pixels); got {items}")
    return items[0], items[1], items[2]


def load_rgb(path: Path, width: int, height: int) -> np.ndarray:
    """Decode ``path`` to a float32 ``height x width x 3`` RGB array in [0, 1].

    :raises ImageError: the file cannot be decoded or is too large.
    """
    from PIL import Image

    try:
        # Turning the bomb *warning* into an error too keeps memory bounded: images
        # between Pillow's warning and error limits are skipped like bigger ones.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                return _to_rgb_array(opened, width, height)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except MemoryError:
        raise ImageError("too large to decode in memory") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a readable image (unknown or damaged format)") from None
    except Exception as exc:  # any decoder failure means a corrupt or foreign file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot be decoded ({detail})") from None


def _to_rgb_array(image: Any, width: int, height: int) -> np.ndarray:
    from PIL import Image

    size = (width, height)
    resample = Image.Resampling.BICUBIC
    if image.mode in _WIDE_GRAY_MODES or image.mode == "F":
        # Pillow's convert("RGB") would clip 16-bit values at 255; keep the full range.
        wide = image.convert("F")
        if wide.size != size:
            wide = wide.resize(size, resample)
        scale = 255.0 if image.mode == "F" else 65535.0
        gray = np.clip(np.asarray(wide, dtype=np.float32) / scale, 0.0, 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, resample)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def normalize(
    rgb: np.ndarray, mean: Sequence[float], std: Sequence[float], layout: str
) -> np.ndarray:
    """``(rgb - mean) / std`` as float32, in ``layout`` (``"NCHW"`` or ``"NHWC"``)
    without the batch axis."""
    out = (rgb - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    if layout == "NCHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


class ImageFolderReader(Reader):
    """Common part of ``nchw_image`` and ``nhwc_image``."""

    LAYOUT: ClassVar[str] = "NCHW"

    def __init__(self, context: ReaderContext) -> None:
        super().__init__(context)
        name = self.PLUGIN_NAME
        self._spec = single_input(
            context, name, "use --reader numpy with .npz files keyed by input name"
        )
        shape = resolve_shape(self._spec, context.input_shape)
        self._height, self._width = self._image_size(shape)
        self._batch = batch_size_for(shape, context)
        self._exact = bool(shape) and shape[0] is not None
        if context.norm_mean is None and context.norm_std is None:
            context.warn(
                "no --norm_mean/--norm_std given: pixels are only scaled to [0,1]; pass the "
                "normalization the model was trained with"
            )
        self._mean = check_norm(
            context.norm_mean if context.norm_mean is not None else (0.0, 0.0, 0.0), "norm_mean"
        )
        self._std = check_norm(
            context.norm_std if context.norm_std is not None else (1.0, 1.0, 1.0),
            "norm_std",
            nonzero=True,
        )
        flag = "--dataset" if context.labeled else "--calibrate_dataset"
        what = "dataset folder" if context.labeled else "calibration folder"
        self._folder = require_folder(context.dataset, what, flag)
        self._files, self._labels, self.class_names = self._list_files()
        self._bad: dict[Path, str] = {}

    # -- set-up ------------------------------------------------------------------

    def _image_size(self, shape: tuple[int | None, ...]) -> tuple[int, int]:
        spec, name = self._spec, self.PLUGIN_NAME
        if len(shape) != 4:
            raise UserError(
                f"reader {name} needs a 4-D image input but model input {spec.name!r} is "
                f"{format_shape(shape)}; use --reader numpy for other inputs"
            )
        nchw = self.LAYOUT == "NCHW"
        channels = shape[1] if nchw else shape[3]
        height, width = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
        if channels is not None and channels != 3:
            other_channels = shape[3] if nchw else shape[1]
            hint = "images are read as 3 RGB channels"
            if other_channels == 3:
                other = "nhwc_image (--nhwc)" if nchw else "nchw_image (--nchw)"
                hint = f"the model looks {'NHWC' if nchw else 'NCHW'}: use --reader {other}"
            raise UserError(
                f"reader {name} lays images out as {self.LAYOUT} but model input {spec.name!r} "
                f"is {format_shape(shape)} with {channels} channels; {hint}"
            )
        if height is None or width is None:
            example = "1,3,224,224" if nchw else "1,224,224,3"
            raise UserError(
                f"model input {spec.name!r} has a dynamic height or width "
                f"{format_shape(shape)}; pass the size to use with --input-shape, "
                f"e.g. --input-shape {example}"
            )
        return int(height), int(width)

    def _list_files(self) -> tuple[list[Path], list[int], list[str]]:
        extensions = image_extensions()
        folder = self._folder
        if not self.context.labeled:
            files = walk_files(folder, extensions)
            if not files:
                self._no_images(folder, extensions, "put calibration images (JPG/PNG/BMP) in it")
            return files, [], []
        classes = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not classes:
            raise UserError(
                f"dataset folder {folder} has no class sub-folders; evaluation needs one "
                "sub-folder per class (their sorted names give the class indices)"
            )
        per_class = [walk_files(folder / name, extensions) for name in classes]
        # Classes take turns (first image of each class, then the second, ...), so
        # that a --size-limit subset keeps the classes balanced.
        files, labels = [], []
        for rank in range(max(len(found) for found in per_class)):
            for index, found in enumerate(per_class):
                if rank < len(found):
                    files.append(found[rank])
                    labels.append(index)
        if not files:
            self._no_images(
                folder,
                extensions,
                "put the test images (JPG/PNG/BMP) in them, each in the sub-folder of its class",
                empty=f"has {len(classes)} class sub-folder(s) but no files in any",
            )
        self._warn_empty_classes(folder, classes, per_class)
        return files, labels, classes

    def _warn_empty_classes(
        self, folder: Path, classes: list[str], per_class: list[list[Path]]
    ) -> None:
        """Warn about class folders without images: they still take a class index (the
        sorted folder names give the indices) but no image tests them."""
        empty = [name for name, found in zip(classes, per_class) if not found]
        if not empty:
            return
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        self.context.warn(
            f"{len(empty)} class folder(s) in {folder} have no images: {shown}; each still "
            "counts as a class (the sorted folder names give the class indices) but no image "
            "tests it; add images or remove the folder if it is not a class"
        )

    @staticmethod
    def _no_images(
        folder: Path, extensions: frozenset[str], fix: str, *, empty: str = "is empty"
    ) -> None:
        """Raise the error for a folder without images: ``empty`` says what was found
        when it holds no files at all, ``fix`` what to put where."""
        others = walk_files(folder, None)
        if not others:
            raise UserError(f"folder {folder} {empty}; {fix}")
        shown = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"folder {folder} has no image files ({len(others)} other file(s): {shown}); "
            f"readable image types include .jpg, .png, .bmp ({len(extensions)} extensions)"
        )

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        limit = self.context.size_limit
        count = len(self._files)
        return min(count, limit) if limit > 0 else count

    def samples(self) -> Iterator[tuple[np.ndarray, Path, int | None]]:
        """Each usable image once, in order, as a normalized float32 array without the
        batch axis, with its file and its class index (None unless labeled).

        Files that fail to decode are skipped with one warning each (also across
        passes); ``size_limit`` counts the images actually used.
        """
        limit = self.context.size_limit
        used = 0
        for index, path in enumerate(self._files):
            if limit > 0 and used >= limit:
                break
            if path in self._bad:
                continue
            try:
                rgb = load_rgb(path, self._width, self._height)
            except ImageError as exc:
                self._bad[path] = str(exc)
                self.context.warn(f"skipping image {path}: {exc}")
                continue
            used += 1
            label = self._labels[index] if self._labels else None
            yield normalize(rgb, self._mean, self._std, self.LAYOUT), path, label
        if used == 0:
            first_path, reason = next(iter(self._bad.items()))
            raise UserError(
                f"no readable image in {self._folder}: all {len(self._bad)} image file(s) "
                f"failed to decode (first: {first_path.name}: {reason})"
            )

    def batches(self) -> Iterator[Batch]:
        """Batches of normalized images keyed by the model's input name; with
        ``labeled`` contexts, ``Batch.labels`` holds each image's class index."""
        name = self._spec.name
        labeled = self.context.labeled

        def chunks() -> Iterator[tuple[dict[str, np.ndarray], tuple[str, ...], Any]]:
            for array, path, label in self.samples():
                labels = np.asarray([label], dtype=np.int64) if labeled else None
                yield {name: array[None]}, (str(path),), labels

        yield from rebatch(chunks(), self._batch, exact=self._exact, warn=self.context.warn)

    @classmethod
    def reference_reader(cls) -> type:
        """The reference tool's ``get_next`` reader class with this reader's layout
        (``NCHWDataReader`` or ``NHWCDataReader``); imports ONNX Runtime."""
        from drpaiq_plugins_readers import reference

        return reference.NCHWDataReader if cls.LAYOUT == "NCHW" else reference.NHWCDataReader


class NCHWImageReader(ImageFolderReader):
    """Images from a folder, normalized, channels first (PyTorch exports)."""

    PLUGIN_NAME = "nchw_image"
    DESCRIPTION = "images from a folder (JPG/PNG/BMP/...), normalized, NCHW float32"
    LAYOUT = "NCHW"


class NHWCImageReader(ImageFolderReader):
    """Images from a folder, normalized, channels last (Keras/TensorFlow exports)."""

    PLUGIN_NAME = "nhwc_image"
    DESCRIPTION = "images from a folder (JPG/PNG/BMP/...), normalized, NHWC float32"
    LAYOUT = "NHWC"
