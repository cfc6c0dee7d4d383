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

With ``tensors=True`` (``--tensors``) it also compares every intermediate tensor the
models share by name with the first, in its graph order: where the outputs' error comes
from. A quantized tensor is read as the next node reads it, dequantized (drpaiq's QDQ
models keep the name there; in ONNX Runtime's the DequantizeLinear output follows it),
so its SQNR includes its own rounding. That rounding alone is measured too, the way
ONNX Runtime's ``qdq_loss_debug`` does: the tensor's float value in the INT8 model
against its dequantized value (``own``): a low ``own`` points at a range too wide for
its values (outliers) or clipping too much, a low SQNR with a high ``own`` at error
from upstream or from the node's weights. The tensors are read from copies of the
models that output them, run beside the models themselves, so that the outputs'
figures stay those of the models as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drpaiq_core.errors import UserError, first_line
from drpaiq_core.plugin_api import ReaderContext
from drpaiq_core.progress import Counter

if TYPE_CHECKING:
    from drpaiq_core.graph import ModelGraph
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
class TensorDifference(OutputDifference):
    """One intermediate tensor of one model against the first model's.

    :ivar op_type: the op that computes it in the first model.
    :ivar quantized: whether this model quantizes it (a QuantizeLinear ->
        DequantizeLinear pair on it).
    :ivar own_signal: for a tensor this model quantizes: sum of its float values (before
        its QuantizeLinear) squared.
    :ivar own_noise: sum of its rounding (dequantized less float values) squared.
    """

    op_type: str = ""
    quantized: bool = False
    own_signal: float = 0.0
    own_noise: float = 0.0

    @property
    def own_db(self) -> float:
        """The SQNR of this tensor's own quantization (NaN when it is not quantized)."""
        return sqnr_db([self.own_noise], [self.own_signal]) if self.quantized else math.nan


@dataclass
class ModelDifference:
    """One model against the first: one entry per output, in the first model's order,
    and with ``tensors=True`` one per shared intermediate tensor, in graph order."""

    model: Path
    outputs: list[OutputDifference] = field(default_factory=list)
    tensors: list[TensorDifference] = field(default_factory=list)

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
                    "tensors": {
                        t.name: {
                            "op_type": t.op_type,
                            "sqnr_db": json_db(t.sqnr_db),
                            "own_db": json_db(t.own_db),
                            "max_abs_diff": t.max_abs,
                        }
                        for t in m.tensors
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
        lines = [
            f"{self.images} images in {self.dataset} (reader {self.reader}); outputs compared "
            f"with {self.base}'s"
        ]
        lines.extend(_aligned(table))
        for m in self.models:
            if m.tensors:
                lines.extend(_tensor_lines(m, self.base))
        return "\n".join(lines)


#: Tensors named on the "lowest own SQNR" line of the text.
_WORST = 5


def _aligned(table: list[list[str]]) -> list[str]:
    """Rows with the first column left-aligned and the others right-aligned."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        ).rstrip()
        for r in table
    ]


def _own(t: TensorDifference) -> str:
    return format_db(t.own_db) if t.quantized else "-"


def _tensor_lines(m: ModelDifference, base: Path) -> list[str]:
    """The per-tensor table of one model, and the tensors whose own rounding costs most."""
    lines = [
        "",
        f"tensors of {m.model} against {base}'s ({len(m.tensors)} shared by name, in graph "
        "order; own: its own quantization alone, - where it is not quantized or an "
        "activation is folded into its QuantizeLinear)",
    ]
    table = [["tensor", "op", "SQNR", "own", "max |diff|"]]
    for t in m.tensors:
        table.append([t.name, t.op_type, format_db(t.sqnr_db), _own(t), f"{t.max_abs:.4g}"])
    lines.extend("  " + line for line in _aligned(table))
    rounded = [t for t in m.tensors if t.quantized and not math.isinf(t.own_db)]
    worst = sorted(rounded, key=lambda t: t.own_db)[:_WORST]
    if worst:
        named = ", ".join(f"{t.name} ({t.op_type}, {format_db(t.own_db)})" for t in worst)
        lines.append(f"lowest own SQNR: {named}")
    return lines


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
    tensors: bool = False,
) -> Comparison:
    """Every output of each of ``models[1:]`` against ``models[0]``'s on the images of
    ``dataset`` (any folder of images: sub-folders are read too, labels are not needed);
    with ``tensors``, every intermediate tensor each shares by name with the first too.

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
    by_model = shared_tensors(paths) if tensors else [([], TensorFetch()) for _ in paths[1:]]
    fetch = [f for _, f in by_model]
    bases = list(dict.fromkeys(name for f in fetch for name in f.bases))
    wanted = [bases, *(f.names() for f in fetch)]
    tensor_sessions = [tensor_session(p, names) for p, names in zip(paths, wanted)] if bases else []
    result.models = [
        ModelDifference(path, [OutputDifference(name) for name in names[0]], listed)
        for path, (listed, _) in zip(paths[1:], by_model)
    ]
    with Counter(total=len(data), desc="comparing", unit="img", quiet=quiet) as bar:
        for batch in data.batches():
            in_order = [batch.feeds[spec.name] for spec in inputs[0]]
            outputs = []
            for path, spec, session, own, size in zip(paths, inputs, sessions, names, fixed):
                feeds = {s.name: value for s, value in zip(spec, in_order)}
                outputs.append(run_batched(path, session, feeds, size, own))
            for difference, theirs in zip(result.models, outputs[1:]):
                for entry, first, other in zip(difference.outputs, outputs[0], theirs):
                    _fold(entry, first, other, difference.model, "output")
            if bases:
                _fold_tensors(
                    result.models, paths, inputs, tensor_sessions, wanted, fetch, fixed, in_order
                )
            count = in_order[0].shape[0] if in_order and np.ndim(in_order[0]) else 1
            result.images += count
            bar.advance(count)
    return result


#: Samples per run of the copies that output every shared tensor: their values are
#: held for one run at a time, whatever the batch size. One image of a 640x640 HRNet
#: is already about a gigabyte of tensors; on the 64x64 YOLO-like export, one at a
#: time took 1.95 s and 128 MB against four at a time's 1.83 s and 156 MB.
_TENSOR_CHUNK = 1


@dataclass
class TensorFetch:
    """Where a model's tensors and the first model's are read, one entry per tensor the
    model shares with the first.

    :ivar bases: the first model's tensor to compare with.
    :ivar views: this model's tensor holding it as the next node reads it.
    :ivar floats: its float value before its QuantizeLinear when this model quantizes it
        and computes that value with the first model's op, else None.
    """

    bases: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    floats: list[str | None] = field(default_factory=list)

    def names(self) -> list[str]:
        """Every tensor of this model to output, once each."""
        return list(dict.fromkeys([*self.views, *(f for f in self.floats if f)]))


def shared_tensors(paths: Sequence[Path]) -> list[tuple[list[TensorDifference], TensorFetch]]:
    """For each model after the first: the float tensors it computes under a name of the
    first model's, in the first model's graph order, each with the op computing it
    there, and where to read them (see :func:`_quantized_view`). A tensor a model holds
    as integers (a QuantizeLinear output) is not comparable and is left out."""
    import onnx

    from drpaiq_core.graph import ModelGraph

    graphs = []
    for path in paths:
        model = onnx.load(str(path), load_external_data=False)
        # Where inference fails, the types known without it are used.
        with contextlib.suppress(Exception):
            model = onnx.shape_inference.infer_shapes(model)
        graphs.append(ModelGraph(model))
    first = graphs[0]
    shared: list[tuple[list[TensorDifference], TensorFetch]] = [
        ([], TensorFetch()) for _ in graphs[1:]
    ]
    for node in first.nodes:
        for name in node.output:
            if not name or not first.is_float(name):
                continue
            base, _ = _quantized_view(first, name)
            for (listed, fetch), graph in zip(shared, graphs[1:]):
                producer = graph.producer(name)
                if producer is None or producer.op_type == "QuantizeLinear":
                    continue
                if not graph.is_float(name):
                    continue
                view, before = _quantized_view(graph, name)
                # An activation folded into the QuantizeLinear (ONNX Runtime drops a
                # Relu/Clip after a Conv): the float value is the Conv's, and the
                # QuantizeLinear does the clipping, which is not rounding.
                computed = graph.producer(before) if before else None
                if computed is None or computed.op_type != node.op_type:
                    before = None
                listed.append(TensorDifference(name, op_type=node.op_type))
                fetch.bases.append(base)
                fetch.views.append(view)
                fetch.floats.append(before)
    return shared


def _quantized_view(graph: ModelGraph, name: str) -> tuple[str, str | None]:
    """The tensor holding ``name``'s values as the model's next node reads them, and
    the float tensor its QuantizeLinear quantizes (None when it is not quantized).
    drpaiq's QDQ models keep the name on the DequantizeLinear output (float ->
    QuantizeLinear -> DequantizeLinear -> name); ONNX Runtime's keep it on the float
    value (name -> QuantizeLinear -> DequantizeLinear -> the value read on)."""
    producer = graph.producer(name)
    if producer is not None and producer.op_type == "DequantizeLinear":
        quantize = graph.producer(producer.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            return name, str(quantize.input[0])
        return name, None
    for quantize in graph.consumers(name):
        if quantize.op_type == "QuantizeLinear":
            for dequantize in graph.consumers(quantize.output[0]):
                if dequantize.op_type == "DequantizeLinear":
                    return str(dequantize.output[0]), name
    return name, None


def tensor_session(path: Path, names: Sequence[str]) -> Any:
    """An ONNX Runtime session of a copy of the model whose outputs are ``names``
    (weights in external data files are read from beside the model)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            output = model.graph.output.add()
            output.name = name
            output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(path.resolve().parent)
    )
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        first = first_line(exc)
        raise UserError(
            f"ONNX Runtime cannot run model {path} with its tensors as outputs: {first}; "
            "compare it without --tensors"
        ) from None


def _fold_tensors(
    models: list[ModelDifference],
    paths: Sequence[Path],
    specs: Sequence[Sequence[Any]],
    sessions: Sequence[Any],
    wanted: Sequence[list[str]],
    fetch: Sequence[TensorFetch],
    fixed: Sequence[int | None],
    in_order: list[np.ndarray],
) -> None:
    """Fold one batch's shared tensors into ``models``, a few samples at a time;
    ``wanted`` holds the tensors each model's copy outputs (the first's, then the
    others')."""
    from drpaiq_core.evaluate import run_batched

    count = in_order[0].shape[0] if in_order and np.ndim(in_order[0]) else 1
    # A model with a fixed batch size runs that many samples whatever it is given.
    step = max((size for size in fixed if size), default=_TENSOR_CHUNK)
    for start in range(0, count, step):
        chunk = [value[start : start + step] for value in in_order]
        values = []
        for path, spec, session, names, size in zip(paths, specs, sessions, wanted, fixed):
            feeds = {s.name: value for s, value in zip(spec, chunk)}
            values.append(dict(zip(names, run_batched(path, session, feeds, size, names))))
        first = values[0]
        for difference, where, theirs in zip(models, fetch, values[1:]):
            for entry, base, view, before in zip(
                difference.tensors, where.bases, where.views, where.floats
            ):
                _fold(entry, first[base], theirs[view], difference.model, "tensor")
                if before is not None:
                    entry.quantized = True
                    unrounded = np.asarray(theirs[before], dtype=np.float64)
                    rounding = np.asarray(theirs[view], dtype=np.float64) - unrounded
                    entry.own_signal += float(np.sum(unrounded * unrounded))
                    entry.own_noise += float(np.sum(rounding * rounding))


def _fold(entry: OutputDifference, first: Any, other: Any, model: Path, what: str) -> None:
    """Fold one batch of one output or tensor into ``entry``."""
    if np.shape(first) != np.shape(other):
        raise UserError(
            f"model {model}: {what} {entry.name!r} has shape {list(np.shape(other))} where "
            f"the first model's has {list(np.shape(first))}; compare needs the same {what}s"
        )
    reference = np.asarray(first, dtype=np.float64)
    delta = np.asarray(other, dtype=np.float64) - reference
    entry.signal += float(np.sum(reference * reference))
    entry.noise += float(np.sum(delta * delta))
    if delta.size:
        entry.max_abs = max(entry.max_abs, float(np.max(np.abs(delta))))
