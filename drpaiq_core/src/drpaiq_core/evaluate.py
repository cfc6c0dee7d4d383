"""Accuracy of one or more classifiers on a labeled image folder (``drpaiq evaluate``).

The folder holds one sub-folder per class; their sorted names give the class indices,
as in torchvision's ImageFolder and the reference tool's accuracy script. Each model
runs in its own ONNX Runtime session; images are decoded once and every model whose
input has the same shape (batch axis aside) is run on each batch, so comparing an FP32
model with its INT8 version costs one pass over the images.

A model with a fixed batch size runs in batches of its size; the last one is filled up
with copies of its last image, whose results are dropped, so that every model scores
every image and the paired columns (flips, p) compare the same images.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drpaiq_core.errors import UserError, first_line
from drpaiq_core.plugin_api import InputSpec, ReaderContext
from drpaiq_core.progress import Counter

if TYPE_CHECKING:
    from drpaiq_core.plugins import PluginHost

log = logging.getLogger("drpaiq")

#: The k of the second accuracy column.
TOP_K = 5


@dataclass
class ModelScore:
    """Correct answers of one model.

    :ivar model: the model file.
    :ivar top1: images whose best class is the label.
    :ivar top5: images whose label is among the 5 best classes.
    :ivar total: images seen.
    :ivar predictions: the best class of every image, in the reader's order (one small
        integer per image, for comparing models image by image).
    :ivar hits: whether that best class is the label, image by image.
    :ivar outputs: scores per image in the model's first output.
    :ivar unlabeled: images whose best class is an index that no class folder has.
    :ivar kl_sum: the sum over images of KL(first model || this one) of the class
        probabilities (see :func:`log_probabilities`), for models that ran on the same
        batches as the first model.
    :ivar kl_images: the images in ``kl_sum`` (0 when it could not be measured).
    """

    model: Path
    top1: int = 0
    top5: int = 0
    total: int = 0
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    hits: list[np.ndarray] = field(default_factory=list, repr=False)
    outputs: int = 0
    unlabeled: int = 0
    kl_sum: float = 0.0
    kl_images: int = 0

    def kl(self, base: ModelScore) -> float | None:
        """Mean KL divergence (nats) of this model's class probabilities from
        ``base``'s: how far an INT8 model's answers are from the FP32 model's on every
        image, not only the few whose top-1 class changes. None when it could not be
        measured on all of ``base``'s images (another input shape or class count)."""
        if self is base or self.kl_images == 0 or self.kl_images != base.total:
            return None
        return self.kl_sum / self.kl_images

    def flips(self, base: ModelScore) -> int | None:
        """Images whose best class differs from ``base``'s (how closely this model, an
        INT8 version say, follows the FP32 one); None if they saw different images."""
        if self.total != base.total:
            return None
        mine = np.concatenate(self.predictions) if self.predictions else np.zeros(0)
        theirs = np.concatenate(base.predictions) if base.predictions else np.zeros(0)
        return int(np.count_nonzero(mine != theirs))

    def right_only(self, base: ModelScore) -> tuple[int, int] | None:
        """The images only this model gets right (top-1) and those only ``base`` gets
        right; None if they saw different images. The top-1 difference between the two
        is the difference of these counts over the images."""
        if self.total != base.total:
            return None
        mine = np.concatenate(self.hits) if self.hits else np.zeros(0, dtype=bool)
        theirs = np.concatenate(base.hits) if base.hits else np.zeros(0, dtype=bool)
        return int(np.count_nonzero(mine & ~theirs)), int(np.count_nonzero(theirs & ~mine))

    def percent(self, correct: int) -> float:
        """``correct`` as a percentage of the images seen."""
        return 100.0 * correct / self.total if self.total else 0.0


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: if two models were equally accurate, the chance
    that the images only one of them gets right split at least as unevenly as
    ``only_a : only_b``. A large p means the top-1 difference is within chance on these
    images; below 0.05 it is unlikely to be chance.

    The binomial terms ``C(n, k) / 2**n`` are summed in logarithms, so any number of
    images works (``2.0**n`` alone overflows beyond 1,023 discordant images).
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = np.arange(min(only_a, only_b), dtype=np.float64)
    # log(C(n, k) / 2**n) for k = 0 .. min, from C(n, k + 1) = C(n, k) * (n - k) / (k + 1).
    logs = np.concatenate(([0.0], np.cumsum(np.log(n - k) - np.log(k + 1)))) - n * math.log(2)
    top = float(logs.max())
    tail = math.exp(top) * float(np.exp(logs - top).sum())
    return min(1.0, 2.0 * tail)


@dataclass
class Evaluation:
    """The result of :func:`evaluate`: one score per model, in the order given.

    :ivar dataset: the labeled folder.
    :ivar reader: the reader plugin used.
    :ivar classes: class folder names, in index order.
    :ivar scores: one per model; the first is the baseline of the deltas.
    """

    dataset: Path
    reader: str
    classes: list[str] = field(default_factory=list)
    scores: list[ModelScore] = field(default_factory=list)

    @property
    def same_images(self) -> bool:
        """Whether every model scored the same number of images (always so with the
        built-in readers; a third-party reader may yield different images per input
        shape)."""
        return len({score.total for score in self.scores}) <= 1

    @property
    def images(self) -> int | None:
        """Images evaluated, the same for every model; None when the models saw
        different numbers of images (see each score's ``total``)."""
        if not self.same_images:
            return None
        return self.scores[0].total if self.scores else 0

    def note(self) -> str | None:
        """The line under the table when models saw different images: why their
        paired columns are blank; None otherwise."""
        if self.same_images:
            return None
        base = self.scores[0]
        others = [s.model.name for s in self.scores[1:] if s.total != base.total]
        return (
            f"{', '.join(others)} scored other images than {base.model.name} "
            f"({base.total}): flips and p need the same images and are left blank, and "
            "their deltas compare different images"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; accuracies and deltas in percent (points)."""
        base = self.scores[0] if self.scores else None
        rows = []
        for score in self.scores:
            top1, top5 = score.percent(score.top1), score.percent(score.top5)
            row: dict[str, Any] = {
                "model": str(score.model),
                "top1": round(top1, 4),
                "top5": round(top5, 4),
                "top1_correct": score.top1,
                "top5_correct": score.top5,
                "images": score.total,
            }
            if base is not None and score is not base:
                row["delta_top1"] = round(top1 - base.percent(base.top1), 4)
                row["delta_top5"] = round(top5 - base.percent(base.top5), 4)
                flips = score.flips(base)
                if flips is not None:
                    row["top1_flips"] = flips
                paired = score.right_only(base)
                if paired is not None:
                    row["top1_right_only"], row["top1_right_only_first"] = paired
                    row["top1_p"] = round(mcnemar_p(*paired), 4)
                kl = score.kl(base)
                if kl is not None:
                    row["kl_from_first"] = float(f"{kl:.4g}")
            rows.append(row)
        result = {
            "dataset": str(self.dataset),
            "reader": self.reader,
            "classes": self.classes,
            "images": self.images,
            "models": rows,
        }
        note = self.note()
        if note is not None:
            result["note"] = note
        return result

    def to_text(self) -> str:
        """A table: model, top-1, top-5, the deltas to the first model (points), the
        flips (images whose top-1 class differs from the first model's), ``p``, the
        McNemar p-value of the top-1 difference (see :func:`mcnemar_p`), and ``KL``, the
        mean KL divergence of the class probabilities from the first model's. When the
        models saw different numbers of images, an ``images`` column shows each
        model's and a line under the table says why flips and p are blank."""
        same = self.same_images
        header = ["model", "top-1", "top-5", "delta top-1", "delta top-5", "flips", "p", "KL"]
        if not same:
            header.insert(1, "images")
        table = [header]
        for row in self.to_dict()["models"]:
            cells = [
                f"{row['top1']:.2f}%",
                f"{row['top5']:.2f}%",
                f"{row['delta_top1']:+.2f}" if "delta_top1" in row else "",
                f"{row['delta_top5']:+.2f}" if "delta_top5" in row else "",
                str(row["top1_flips"]) if "top1_flips" in row else "",
                f"{row['top1_p']:.2f}" if "top1_p" in row else "",
                f"{row['kl_from_first']:.2e}" if "kl_from_first" in row else "",
            ]
            table.append([row["model"], *([] if same else [str(row["images"])]), *cells])
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        totals = sorted({score.total for score in self.scores})
        count = f"{self.images}" if same else f"{totals[0]} to {totals[-1]}"
        lines = [
            f"{count} images, {len(self.classes)} classes in {self.dataset} (reader {self.reader})"
        ]
        for r in table:
            line = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("  ".join(line).rstrip())
        note = self.note()
        if note is not None:
            lines.append(note)
        return "\n".join(lines)


def input_signature(inputs: Sequence[InputSpec]) -> tuple[Any, ...]:
    """What decides whether two models can share decoded images."""
    # Models whose inputs agree in everything but their names and batch sizes share
    # decoded images; each model runs them in batches of its own size.
    return tuple((tuple(spec.shape[1:]), spec.dtype.str) for spec in inputs)


def fixed_batch(inputs: Sequence[InputSpec]) -> int | None:
    """The batch size the model's first input fixes, or None if its batch axis is dynamic."""
    shape = tuple(inputs[0].shape) if inputs else ()
    return int(shape[0]) if shape and shape[0] is not None else None


def any_batch(inputs: Sequence[InputSpec]) -> list[InputSpec]:
    """``inputs`` with a dynamic batch axis: the reader then yields every image, the
    last batch short, where for a fixed batch size it would leave the rest out."""
    return [
        dataclasses.replace(spec, shape=(None, *spec.shape[1:])) if spec.shape else spec
        for spec in inputs
    ]


def reader_batch_size(batch_size: int, fixed: Sequence[int]) -> int:
    """Images per decoded batch for models with the fixed batch sizes ``fixed`` (and
    any dynamic ones): ``batch_size`` rounded up to a multiple of every fixed size, so
    that only the very last batch needs filling up. When that multiple would be more
    than four times the largest of them, the largest is used (models whose size does
    not divide it then fill up the last part of every batch)."""
    if not fixed:
        return batch_size
    largest = max(batch_size, *fixed)
    step = math.lcm(*fixed)
    rounded = step * math.ceil(batch_size / step)
    return rounded if rounded <= 4 * largest else largest


def _once(warn: Callable[[str], None]) -> Callable[[str], None]:
    """``warn`` that passes each message on once: models with different input shapes
    read the folder each, and the reader's warnings (an empty class folder, an
    unreadable image) need saying only once."""
    seen: set[str] = set()

    def warn_once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            warn(message)

    return warn_once


def open_session(path: Path) -> Any:
    """An ONNX Runtime CPU session of the model file; its failure as one line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise UserError(f"ONNX Runtime cannot run model {path}: {first}") from None


def evaluate(
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
) -> Evaluation:
    """Top-1 and top-5 accuracy of each model on the labeled folder ``dataset``.

    :param models: model files; the first is the baseline of the deltas.
    :param reader: the image reader plugin (``nchw_image`` or ``nhwc_image``).
    :param quiet: no progress bar.
    :raises UserError: a bad model, folder, normalization, or a model whose output
        has fewer classes than the folder.
    """
    from drpaiq_core.datasource import ValidatingReader, make_reader, warn_user
    from drpaiq_core.load import load_model, model_inputs

    if not models:
        raise UserError("no model given: drpaiq evaluate MODEL [MODEL...] --dataset DIR")
    loaded = []
    for path in models:
        model = load_model(path)
        loaded.append((Path(path), model_inputs(model)))
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, (_, inputs) in enumerate(loaded):
        groups.setdefault(input_signature(inputs), []).append(index)

    result = Evaluation(dataset=dataset, reader=reader)
    result.scores = [ModelScore(path) for path, _ in loaded]
    warn = _once(warn_user)
    for members in groups.values():
        first_path, first_inputs = loaded[members[0]]
        batches = {i: fixed_batch(loaded[i][1]) for i in members}
        inputs = any_batch(first_inputs)
        context = ReaderContext(
            dataset=dataset,
            model_path=first_path,
            inputs=inputs,
            norm_mean=norm_mean,
            norm_std=norm_std,
            size_limit=size_limit,
            batch_size=reader_batch_size(batch_size, [b for b in batches.values() if b]),
            input_shape=input_shape,
            labeled=True,
            warn=warn,
        )
        data = ValidatingReader(make_reader(host, reader, context), inputs)
        result.classes = list(getattr(data, "class_names", []) or [])
        sessions = [open_session(loaded[i][0]) for i in members]
        label = f"evaluating {len(members)} models" if len(members) > 1 else "evaluating"
        with Counter(total=len(data), desc=label, unit="img", quiet=quiet) as bar:
            for batch in data.batches():
                if batch.labels is None:
                    raise UserError(f"reader {reader} gave no class labels; use an image reader")
                labels = np.asarray(batch.labels)
                feeds_in_order = [batch.feeds[spec.name] for spec in first_inputs]
                base: np.ndarray | None = None
                as_probabilities = False
                for index, session in zip(members, sessions):
                    feeds = {spec.name: v for spec, v in zip(loaded[index][1], feeds_in_order)}
                    logits = _class_scores(result.scores[index], session, feeds, batches[index])
                    _tally(result.scores[index], logits, labels, len(result.classes))
                    # The first model's batch is the first of its group's: the others
                    # of the group are compared with it on the same images, their
                    # outputs read as the first model's are (probabilities or logits).
                    if index == 0:
                        as_probabilities = is_probabilities(logits)
                        base = log_probabilities(logits, as_probabilities)
                    elif base is not None and logits.shape == base.shape:
                        mine = log_probabilities(logits, as_probabilities)
                        _add_kl(result.scores[index], base, mine)
                bar.advance(len(labels))
        for index, session in zip(members, sessions):
            _warn_extra_scores(result.scores[index], session, len(result.classes))
    return result


def _class_scores(
    score: ModelScore, session: Any, feeds: dict[str, np.ndarray], fixed: int | None
) -> np.ndarray:
    """The model's first output for the images in ``feeds``, as ``[images, scores]``."""
    output = session.get_outputs()[0].name
    count = next(iter(feeds.values())).shape[0]
    (logits,) = run_batched(score.model, session, feeds, fixed, [output])
    if logits.ndim < 2 or logits.shape[0] != count:
        raise UserError(
            f"model {score.model}: output {output!r} has shape {list(logits.shape)}; evaluate "
            "needs class scores of shape [N, classes]"
        )
    return logits.reshape(count, -1)


def run_batched(
    model: Path, session: Any, feeds: dict[str, np.ndarray], fixed: int | None, names: list[str]
) -> list[np.ndarray]:
    """The outputs ``names`` of ``session`` for the images in ``feeds``.

    A model with a fixed batch size runs in batches of that size; a short last batch
    is filled up with copies of its last image, and their outputs are dropped (rows of
    an output whose first axis is that size). The runs' outputs are joined along their
    first axis; a scalar output is the last run's.
    """
    count = next(iter(feeds.values())).shape[0]
    step = fixed or count
    parts: list[list[np.ndarray]] = []
    for start in range(0, count, step):
        chunk = {name: value[start : start + step] for name, value in feeds.items()}
        real = min(step, count - start)
        if real < step:
            chunk = {name: _fill_up(value, step) for name, value in chunk.items()}
        outputs = _run(model, session, chunk, names)
        parts.append([o[:real] if o.ndim and o.shape[0] == step else o for o in outputs])
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(values) if values[0].ndim else values[-1] for values in zip(*parts)]


def _fill_up(value: np.ndarray, size: int) -> np.ndarray:
    """``value`` with copies of its last sample appended up to ``size`` samples."""
    return np.concatenate([value, np.repeat(value[-1:], size - value.shape[0], axis=0)])


def _run(
    model: Path, session: Any, feeds: dict[str, np.ndarray], names: list[str]
) -> list[np.ndarray]:
    """``names`` for ``feeds``; ONNX Runtime's failure as one line naming the model."""
    try:
        return [np.asarray(value) for value in session.run(names, feeds)]
    except Exception as exc:
        first = first_line(exc, 200)
        raise UserError(
            f"model {model}: ONNX Runtime failed on the evaluation images: {first}; check "
            "the layout (--nchw/--nhwc) and --input-shape"
        ) from None


def _tally(score: ModelScore, logits: np.ndarray, labels: np.ndarray, classes: int) -> None:
    """Add one batch's top-1/top-5 hits (``logits`` is ``[images, scores]``) to ``score``."""
    score.outputs = logits.shape[1]
    if logits.shape[1] < classes:
        raise UserError(
            f"model {score.model} scores {logits.shape[1]} classes but the dataset has "
            f"{classes} class folders; check --dataset"
        )
    # A stable sort makes ties resolve to the lower class index on every platform.
    order = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
    hits = order[:, 0] == labels
    score.predictions.append(order[:, 0].astype(np.int32))
    score.hits.append(hits)
    score.top1 += int(np.count_nonzero(hits))
    score.top5 += int(np.sum(np.any(order == labels[:, None], axis=1)))
    score.total += int(labels.shape[0])
    score.unlabeled += int(np.count_nonzero(order[:, 0] >= classes))


#: The smallest probability a model's output is taken to hold: an INT8 Softmax output
#: rounds small probabilities to 0, whose log would be -inf.
PROBABILITY_FLOOR = 1e-6


def is_probabilities(scores: np.ndarray) -> bool:
    """Whether every row of ``scores`` is a probability distribution (non-negative,
    summing to 1): the output of a Softmax rather than logits."""
    values = np.asarray(scores, dtype=np.float64)
    return bool(np.all(values >= 0.0) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def log_probabilities(scores: np.ndarray, probabilities: bool | None = None) -> np.ndarray:
    """Per image, the log of its class probabilities. ``probabilities`` says how to read
    ``scores`` (by default: :func:`is_probabilities`): as probabilities, renormalized
    (an INT8 Softmax output need not sum to 1 exactly) with a floor of
    :data:`PROBABILITY_FLOOR`; else as logits, through log-softmax."""
    values = np.asarray(scores, dtype=np.float64)
    if probabilities is None:
        probabilities = is_probabilities(values)
    if probabilities:
        values = np.maximum(values, 0.0)
        total = values.sum(axis=1, keepdims=True)
        uniform = np.full_like(values, 1.0 / values.shape[1])  # for an all-zero row
        values = np.divide(values, total, out=uniform, where=total > 0)
        return np.log(np.maximum(values, PROBABILITY_FLOOR))
    shifted = values - values.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def kl_per_image(base: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """KL(base || mine) of each image, from log-probabilities (:func:`log_probabilities`);
    never negative (rounding could make a tiny one so)."""
    return np.maximum(np.sum(np.exp(base) * (base - mine), axis=1), 0.0)


def _add_kl(score: ModelScore, base: np.ndarray, mine: np.ndarray) -> None:
    """Add one batch's KL(base || mine) per image (log-probabilities in) to ``score``."""
    divergence = kl_per_image(base, mine)
    score.kl_sum += float(np.sum(divergence))
    score.kl_images += int(divergence.shape[0])


def _warn_extra_scores(score: ModelScore, session: Any, classes: int) -> None:
    """Warn when the model's first output has more scores than the folder has classes:
    it may not be the class scores at all (features, or another output first), or the
    folder's classes may not be the model's first ones. Top-1 answers beyond the
    classes can never match a label; the warning counts them."""
    if score.outputs <= classes:
        return
    outputs = session.get_outputs()
    first = outputs[0]
    fitting = [o.name for o in outputs[1:] if o.shape and o.shape[-1] == classes]
    hint = (
        f"its output {fitting[0]!r} has {classes}: export it as the first output"
        if fitting
        else "evaluate needs the class scores, in the order of the sorted class folders, "
        "as the first output"
    )
    log.warning(
        f"model {score.model}: first output {first.name!r} {_shape_text(first.shape)} has "
        f"{score.outputs} scores per image but the dataset has {classes} classes, so only "
        f"scores 0-{classes - 1} can match a label (the top-1 was a higher index for "
        f"{score.unlabeled} of {score.total} images); {hint}"
    )


def _shape_text(shape: Sequence[Any]) -> str:
    """``[N,128]``-style text of an ONNX Runtime output shape (names for dynamic axes)."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
