"""Helpers the built-in readers share: listing files, resolving input shapes, batching.

Only numpy and the standard library are imported here, so registering the readers
stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, InputSpec, ReaderContext


def format_shape(shape: Sequence[int | None]) -> str:
    """``[N,3,?,?]``-style text for a model shape (``N`` for a dynamic batch axis)."""
    parts = []
    for axis, dim in enumerate(shape):
        if dim is None:
            parts.append("N" if axis == 0 else "?")
        else:
            parts.append(str(dim))
    return "[" + ",".join(parts) + "]"


def walk_files(folder: Path, suffixes: frozenset[str] | None) -> list[Path]:
    """Files under ``folder`` (recursively; hidden files and folders skipped) whose
    lower-cased suffix is in ``suffixes`` (all files when None), sorted by their path
    relative to ``folder`` so that the order never depends on the file system."""
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root) / name
            if suffixes is None or path.suffix.lower() in suffixes:
                found.append((path.relative_to(folder).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def require_folder(dataset: Path | None, what: str, flag: str) -> Path:
    """``dataset`` as an existing folder, or a :class:`UserError` saying how to give one."""
    if dataset is None:
        raise UserError(f"no {what} given; pass {flag} DIR")
    if not dataset.exists():
        raise UserError(f"{what} {dataset} does not exist; pass {flag} DIR with an existing folder")
    if not dataset.is_dir():
        raise UserError(f"{what} {dataset} is not a folder; pass {flag} DIR")
    return dataset


def single_input(context: ReaderContext, reader: str, hint: str) -> InputSpec:
    """The model's only input; readers that feed one tensor refuse multi-input models."""
    inputs = list(context.inputs)
    if len(inputs) != 1:
        names = ", ".join(repr(spec.name) for spec in inputs) or "none"
        raise UserError(
            f"reader {reader} feeds one input tensor but the model has {len(inputs)} inputs "
            f"({names}); {hint}"
        )
    return inputs[0]


def resolve_shape(spec: InputSpec, input_shape: tuple[int, ...] | None) -> tuple[int | None, ...]:
    """The model input's shape with dynamic dimensions filled from ``--input-shape``.

    The batch axis (0) stays as the model says: batching is the reader's business.
    A given ``--input-shape`` must have the model's rank and agree with its fixed
    dimensions.
    """
    shape = tuple(spec.shape)
    if input_shape is None:
        return shape
    if shape and len(input_shape) != len(shape):
        raise UserError(
            f"--input-shape {','.join(map(str, input_shape))} has {len(input_shape)} dimensions "
            f"but model input {spec.name!r} has {len(shape)} {format_shape(shape)}"
        )
    if not shape:
        return (None, *input_shape[1:])
    resolved: list[int | None] = [shape[0]]
    for axis in range(1, len(shape)):
        fixed, given = shape[axis], input_shape[axis]
        if given <= 0:
            raise UserError(f"--input-shape dimension {axis} is {given}; dimensions must be > 0")
        if fixed is not None and fixed != given:
            raise UserError(
                f"--input-shape {','.join(map(str, input_shape))} disagrees with model input "
                f"{spec.name!r} {format_shape(shape)} at dimension {axis} ({given} vs {fixed})"
            )
        resolved.append(given)
    return tuple(resolved)


def batch_size_for(spec_shape: Sequence[int | None], context: ReaderContext) -> int:
    """Samples per batch: the model's fixed batch dimension if it has one, else the
    context's batch size."""
    if spec_shape and spec_shape[0] is not None:
        return int(spec_shape[0])
    return max(1, int(context.batch_size))


def rebatch(
    chunks: Iterable[tuple[dict[str, np.ndarray], tuple[str, ...], np.ndarray | None]],
    batch_size: int,
    *,
    exact: bool,
    warn: object = None,
) -> Iterator[Batch]:
    """Regroup chunks of samples (feeds with a leading sample axis, their sources, their
    labels) into batches of ``batch_size`` samples.

    Consecutive chunks are joined only when every feed has the same trailing shape and
    dtype; otherwise the pending batch is yielded early. With ``exact`` (a model whose
    batch dimension is fixed) a short last batch cannot be fed and is dropped, with a
    warning through ``warn`` (a callable taking one line).
    """
    pending: list[tuple[dict[str, np.ndarray], tuple[str, ...], np.ndarray | None]] = []
    pending_count = 0

    def signature(feeds: dict[str, np.ndarray]) -> tuple[object, ...]:
        return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()))

    def flush() -> Batch:
        names = list(pending[0][0])
        feeds = {name: np.concatenate([p[0][name] for p in pending], axis=0) for name in names}
        sources = tuple(s for p in pending for s in p[1])
        label_parts = [p[2] for p in pending]
        labels = None
        if all(part is not None for part in label_parts):
            labels = np.concatenate([part for part in label_parts if part is not None])
        return Batch(feeds=feeds, labels=labels, sources=sources)

    for feeds, sources, labels in chunks:
        count = next(iter(feeds.values())).shape[0] if feeds else 0
        start = 0
        while start < count:
            if pending and signature(pending[0][0]) != signature(feeds):
                yield from _emit_short(flush(), exact, batch_size, warn)
                pending, pending_count = [], 0
            take = min(count - start, batch_size - pending_count)
            part = {name: value[start : start + take] for name, value in feeds.items()}
            part_labels = labels[start : start + take] if labels is not None else None
            pending.append((part, sources[start : start + take], part_labels))
            pending_count += take
            start += take
            if pending_count == batch_size:
                yield flush()
                pending, pending_count = [], 0
    if pending:
        yield from _emit_short(flush(), exact, batch_size, warn)


def _emit_short(batch: Batch, exact: bool, batch_size: int, warn: object) -> Iterator[Batch]:
    count = len(batch.sources) or next(iter(batch.feeds.values())).shape[0]
    if exact and count != batch_size:
        if callable(warn):
            warn(
                f"the model's batch dimension is fixed at {batch_size}; the last {count} "
                "sample(s) do not fill a batch and are left out"
            )
        return
    yield batch
