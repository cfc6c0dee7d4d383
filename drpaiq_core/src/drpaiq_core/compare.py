"""How far each model's outputs are from the first model's (``drpaiq compare``).

``drpaiq evaluate`` scores classifiers against labels. Detectors, segmenters and pose
models have no top-1, and their metrics (mAP, mIoU, OKS) need annotations and
post-processing that differ from model to model. What every model has is outputs: on a
folder of images (no labels), ``compare`` runs the first model (the FP32 one) and each
other model (its INT8 versions), and measures for every output the signal-to-noise
ratio of the others' values against the first model's:

    SQNR = 10 log10( sum(first^2) / sum((first - other)^2) )   [dB; 6 dB is one bit]

summed over all images, and the largest absolute difference. The model's SQNR is that
of the mean noise-to-signal ratio of its outputs, so that an output of large values
(box coordinates in pixels) does not hide one of small values (class scores). It is the
measure ``quantize --diagnose`` ranks tensors by.

Images are decoded once; every model must take the same inputs. A model with a fixed
batch size runs in batches of its size, as in ``evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import ReaderContext
from drpaiq_core.progress import Counter

if TYPE_CHECKING:
    from drpaiq_core.plugins import PluginHost


def sqnr_db(noise: Sequence[float], signal: Sequence[float]) -> float:
    """The SQNR (dB) of outputs with these summed noise and signal powers: of the mean
    over outputs of noise over signal; ``inf`` when there is no noise. An output with
    no signal counts only if it has noise (then the SQNR is ``-inf``)."""
    ratios = [n / s if s > 0 else (0.0 if n == 0 else math.inf) for n, s in zip(noise, signal)]
    ratio = sum(ratios) / len(ratios) if ratios else 0.0
    if ratio == 0:
        return math.inf
    return -math.inf if math.isinf(ratio) else -10.0 * math.log10(ratio)


def json_db(value: float) -> float | None:
    """An SQNR for JSON: rounded to 1e-4 dB; null when infinite (no noise) or NaN."""
    return None if math.isinf(value) or math.isnan(value) else round(value, 4)


def format_db(value: float) -> str:
    """An SQNR for a table: ``exact`` for no noise at all."""
    return "exact" if math.isinf(value) and value > 0 else f"{value:.2f} dB"


@dataclass
class OutputDifference:
    """One output of one model against the first model's.

    :ivar name: the output's name (the first model's).
    :ivar signal: sum of the first model's values squared.
    :ivar noise: sum of the differences squared.
    :ivar max_abs: the largest absolute difference.
    """

    name: str
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0

    @property
    def sqnr_db(self) -> float:
        """This output's SQNR in dB."""
        return sqnr_db([self.noise], [self.signal])


@dataclass
class ModelDifference:
    """One model against the first: one entry per output, in the first model's order."""

    model: Path
    outputs: list[OutputDifference] = field(default_factory=list)

    @property
    def sqnr_db(self) -> float:
        """The model's SQNR in dB (see :func:`sqnr_db`)."""
        return sqnr_db([o.noise for o in self.outputs], [o.signal for o in self.outputs])


@dataclass
class Comparison:
    """The result of :func:`compare`.

    :ivar dataset: the image folder.
    :ivar reader: the reader plugin used.
    :ivar images: images compared.
    :ivar base: the first model, the one the others are compared with.
    :ivar models: the other models, in the order given.
    """

    dataset: Path
    reader: str
    base: Path
    images: int = 0
    models: list[ModelDifference] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (an infinite SQNR, for identical outputs, is null)."""
        return {
            "dataset": str(self.dataset),
            "reader": self.reader,
            "images": self.images,
            "base": str(self.base),
            "models": [
                {
                    "model": str(m.model),
                    "sqnr_db": json_db(m.sqnr_db),
                    "outputs": {
                        o.name: {"sqnr_db": json_db(o.sqnr_db), "max_abs_diff": o.max_abs}
                        for o in m.outputs
                    },
                }
                for m in self.models
            ],
        }

    def to_text(self) -> str:
        """A table: each model's SQNR and, for a model with several outputs, each
        output's."""
        names = [o.name for o in self.models[0].outputs] if self.models else []
        header = ["model", "SQNR", *(names if len(names) > 1 else []), "max |diff|"]
        table = [header]
        for m in self.models:
            per_output = [format_db(o.sqnr_db) for o in m.outputs] if len(names) > 1 else []
            largest = max((o.max_abs for o in m.outputs), default=0.0)
            table.append([str(m.model), format_db(m.sqnr_db), *per_output, f"{largest:.4g}"])
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = [
            f"{self.images} images in {self.dataset} (reader {self.reader}); outputs compared "
            f"with {self.base}'s"
        ]
        for r in table:
            line = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("  ".join(line).rstrip())
        return "\n".join(lines)


def require_two(models: Sequence[Any]) -> None:
    """Refuse fewer than two models (nothing to compare)."""
    if len(models) < 2:
        raise UserError(
            "compare needs two models or more: drpaiq compare FP32.onnx INT8.onnx [...] "
            "--dataset DIR"
        )


def compare(
    models: Sequence[Path],
    *,
    dataset: Path,
    host: PluginHost,
    reader: str = "nchw_image",
    norm_mean: tuple[float, ...] | None = None,
    norm_std: tuple[float, ...] | None = None,
    batch_size: int = 32,
    size_limit: int = 0,
    input_shape: tuple[int, ...] | None = None,
    quiet: bool = False,
) -> Comparison:
    """Every output of each of ``models[1:]`` against ``models[0]``'s on the images of
    ``dataset`` (any folder of images: sub-folders are read too, labels are not needed).

    :raises UserError: fewer than two models, a bad model or folder, models with other
        inputs or other outputs than the first.
    """
    from drpaiq_core.datasource import ValidatingReader, make_reader, warn_user
    from drpaiq_core.evaluate import (
        any_batch,
        fixed_batch,
        input_signature,
        open_session,
        reader_batch_size,
        run_batched,
    )
    from drpaiq_core.load import load_model, model_inputs

    require_two(models)
    paths = [Path(m) for m in models]
    inputs = [model_inputs(load_model(path)) for path in paths]
    for path, spec in zip(paths[1:], inputs[1:]):
        if input_signature(spec) != input_signature(inputs[0]):
            raise UserError(
                f"model {path} takes other inputs than {paths[0]}; compare needs models "
                "with the same inputs (an FP32 model and its INT8 versions)"
            )
    sessions = [open_session(path) for path in paths]
    names = [[o.name for o in session.get_outputs()] for session in sessions]
    for path, own in zip(paths[1:], names[1:]):
        if len(own) != len(names[0]):
            raise UserError(
                f"model {path} has {len(own)} output(s) and {paths[0]} {len(names[0])}; "
                "compare needs the same outputs"
            )
    fixed = [fixed_batch(spec) for spec in inputs]
    shared = any_batch(inputs[0])
    context = ReaderContext(
        dataset=dataset,
        model_path=paths[0],
        inputs=shared,
        norm_mean=norm_mean,
        norm_std=norm_std,
        size_limit=size_limit,
        batch_size=reader_batch_size(batch_size, [b for b in fixed if b]),
        input_shape=input_shape,
        warn=warn_user,
    )
    data = ValidatingReader(make_reader(host, reader, context), shared)
    result = Comparison(dataset=dataset, reader=reader, base=paths[0])
    result.models = [
        ModelDifference(path, [OutputDifference(name) for name in names[0]]) for path in paths[1:]
    ]
    with Counter(total=len(data), desc="comparing", unit="img", quiet=quiet) as bar:
        for batch in data.batches():
            in_order = [batch.feeds[spec.name] for spec in inputs[0]]
            outputs = []
            for path, spec, session, own, size in zip(paths, inputs, sessions, names, fixed):
                feeds = {s.name: value for s, value in zip(spec, in_order)}
                outputs.append(run_batched(path, session, feeds, size, own))
            for difference, theirs in zip(result.models, outputs[1:]):
                _add(difference, outputs[0], theirs)
            count = in_order[0].shape[0] if in_order and np.ndim(in_order[0]) else 1
            result.images += count
            bar.advance(count)
    return result


def _add(difference: ModelDifference, base: list[np.ndarray], mine: list[np.ndarray]) -> None:
    """Fold one batch's outputs into ``difference``."""
    for entry, first, other in zip(difference.outputs, base, mine):
        if np.shape(first) != np.shape(other):
            raise UserError(
                f"model {difference.model}: output {entry.name!r} has shape "
                f"{list(np.shape(other))} where the first model's has {list(np.shape(first))}; "
                "compare needs the same outputs"
            )
        reference = np.asarray(first, dtype=np.float64)
        delta = np.asarray(other, dtype=np.float64) - reference
        entry.signal += float(np.sum(reference * reference))
        entry.noise += float(np.sum(delta * delta))
        if delta.size:
            entry.max_abs = max(entry.max_abs, float(np.max(np.abs(delta))))
