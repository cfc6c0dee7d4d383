"""Sequential empirical bias correction: an optional step between plan and emit.

Rounding int8 weights and activations does not only add noise to a layer's output, it
shifts its mean: per output channel, the quantized layer is off by a nearly constant
amount on every image. That offset is measurable on the calibration data and can be
cancelled by the one parameter that adds a constant per channel, the int32 bias.

For every int32 bias of the plan (a *site*: Conv, ConvTranspose, Gemm, an unfolded
BatchNormalization, a MatMul + Add BiasAdd) the mean of the layer's float output (the
node output before its QuantizeLinear) is measured per output channel on the
calibration data, once in the FP32 model and once in the quantized model, and the bias
moves by the difference::

    q_b <- round(q_b - (E[y_q] - E[y_f]) / s_b)        (s_b unchanged, clipped to int32)

Only the values in ``plan.constants`` change; scales, zero points and the graph stay
as planned, so the option costs nothing at inference time.

Why sequential: a layer's measured error includes the error its input brings from the
layers upstream. Measured all at once, every error would be corrected where it arises
*and* again in each layer below, which overshoots (on the modA sample it lost 3 top-1
points with MinMax). So sites are corrected by *level* (1 + the largest level of a
biased site upstream): each level is measured on the model emitted with all the
corrections of the levels above, so an error is corrected once, where it first shows.

Cost: one pass of the FP32 model, then one pass of the quantized model per level
(about 10 passes on the shipped samples), over :data:`DEFAULT_SAMPLES` calibration
samples spread over the data (``bias_correction_samples``; kept in memory between
passes when they fit :data:`_KEEP_BYTES`). A level's pass runs
only the nodes that level's outputs depend on (ONNX Runtime runs every node of a
session, whatever is fetched): on the YOLO-like export with 200 images the whole run
took 4.7 s instead of 6.4 s. Each pass is an ONNX Runtime inference run through
:class:`~drpaiq_core.calibrate.ActivationRunner` (the same batching, prefetch and error
messages as calibration); memory does not grow with the number of images (per-channel
sums only). Readers are iterated once per pass, unless the picked samples are kept:
image readers re-read their files, ``get_next()`` readers replay their recording.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from drpaiq_core.errors import UserError
from drpaiq_core.plan import QuantPlan
from drpaiq_core.plugin_api import Calibrator, Reader, TensorRange

if TYPE_CHECKING:
    import onnx

#: The channel axis of a biased node's output, by op type. The fused BiasAdd of a
#: MatMul is planned on its Add, whose bias runs along the last axis; every other
#: biased op writes ``[N, C, ...]``. Biases of other ops (a third-party quantizer's)
#: are left as planned.
_CHANNEL_AXIS: dict[str, int] = {
    "Conv": 1,
    "ConvTranspose": 1,
    "Gemm": 1,
    "BatchNormalization": 1,
    "Add": -1,
}

_INT32 = np.iinfo(np.int32)

#: Samples the means are measured on by default (``bias_correction_samples``), spread
#: over the calibration data. A mean over 128 images is precise to a few percent of
#: its channel's spread per image, and every pass costs as many images, once per level:
#: with 1,000 calibration images and a YOLO's 60 levels, all of them would be 60,000
#: image runs.
DEFAULT_SAMPLES = 128
#: The measured samples are kept in memory between passes up to this size (128 images
#: of 3 x 416 x 416 in float32), so that a pass decodes nothing; larger ones are read
#: again on each pass.
_KEEP_BYTES = 256 * 2**20


@dataclass
class BiasCorrectionReport:
    """What :func:`correct_biases` did, for the run's summary.

    :ivar sites: int32 biases in the plan.
    :ivar corrected: biases measured and corrected (a correction may round to no move).
    :ivar moved: biases of which at least one channel changed.
    :ivar levels: levels corrected (one pass of the quantized model each).
    :ivar passes: passes over the calibration data (FP32 means + one per level).
    :ivar mean_shift: mean |change| of the corrected biases' channels, in units of
        their bias scale (int32 steps).
    :ivar skipped: why biases were left as planned -> how many.
    :ivar shifts: plan constant -> its integer change per channel (for tests and
        debugging; not in the note).
    """

    sites: int = 0
    corrected: int = 0
    moved: int = 0
    levels: int = 0
    passes: int = 0
    mean_shift: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    shifts: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def note(self) -> str:
        """One line for :attr:`drpaiq_core.summary.Summary.notes`."""
        text = (
            f"bias correction: moved {self.moved} of {self.sites} int32 bias(es) in "
            f"{self.passes} pass(es) over the calibration data ({self.levels} level(s)); "
            f"mean |shift| {self.mean_shift:.2f} x the bias scale"
        )
        if self.skipped:
            reasons = ", ".join(f"{count} {why}" for why, count in sorted(self.skipped.items()))
            text += f"; left as planned: {reasons}"
        return text


@dataclass
class _Site:
    """One int32 bias of the plan and the node that adds it."""

    key: str  # the plan.constants key
    node: str
    output: str  # the node's output in the FP32 model
    axis: int
    level: int = 0


@dataclass
class _MeanState:
    """Per-channel running sums of one tensor."""

    axis: int = 1
    sums: np.ndarray | None = None
    count: int = 0
    broken: bool = False


class _ChannelMeans(Calibrator):
    """Not a range calibrator: the per-channel mean statistic ActivationRunner folds.

    ActivationRunner hands :meth:`collect` only the finite values of a batch; a batch
    that had NaN or Inf arrives flattened, its channels lost (the caller sees the count
    in ``CalibrationStats.nonfinite``). Such a batch, or one whose channels differ from
    the first batch's, marks the state broken: no mean is given for the tensor.
    """

    PLUGIN_NAME = "bias_correction_means"
    PASSES: ClassVar[int] = 1

    def new_state(self) -> _MeanState:
        return _MeanState()

    def collect(self, state: _MeanState, values: np.ndarray, pass_index: int) -> _MeanState:
        if state.broken:
            return state
        axis = state.axis % values.ndim if values.ndim >= 2 else None
        channels = values.shape[axis] if axis is not None else -1
        if axis is None or (state.sums is not None and state.sums.size != channels):
            state.broken = True
            return state
        # Summing over the other axes in place avoids a transposed copy of the batch;
        # float64 keeps the sum of many float32 values exact enough.
        others = tuple(i for i in range(values.ndim) if i != axis)
        sums = values.sum(axis=others, dtype=np.float64)
        state.sums = sums if state.sums is None else state.sums + sums
        state.count += values.size // max(channels, 1)
        return state

    def merge(self, a: _MeanState, b: _MeanState) -> _MeanState:
        if a.broken or b.broken:
            return _MeanState(a.axis, broken=True)
        if a.sums is None or b.sums is None:
            return b if a.sums is None else a
        if a.sums.size != b.sums.size:
            return _MeanState(a.axis, broken=True)
        return _MeanState(a.axis, a.sums + b.sums, a.count + b.count)

    def compute(self, state: _MeanState) -> TensorRange:
        """The smallest and largest channel mean; ``details["means"]`` holds them all
        (absent when the state is broken or empty)."""
        if state.broken or state.sums is None or state.count == 0:
            return TensorRange(0.0, 0.0, {"empty": True})
        means = state.sums / state.count
        return TensorRange(float(means.min()), float(means.max()), {"means": means})


def correct_biases(
    model: onnx.ModelProto,
    plan: QuantPlan,
    reader: Reader,
    *,
    samples: int = DEFAULT_SAMPLES,
    quiet: bool = False,
    workdir: Path | None = None,
) -> BiasCorrectionReport:
    """Move every int32 bias of ``plan`` so that, on the calibration data, each biased
    layer's quantized output has the FP32 output's per-channel mean.

    Sites (int32 biases) are corrected level by level from the input on; see the module
    documentation for the method, why it is sequential, and its cost (one FP32 pass plus
    one pass of the quantized model per level). Deterministic: the same model, plan and
    data give the same corrections.

    Left as planned, and counted in the report: a bias read by several nodes (one
    correction cannot fit each), one of an op whose channel axis is unknown, one whose
    output had NaN or Inf values on the calibration data (its mean is meaningless), and
    one whose size does not match its output's channels.

    :param model: the prepared FP32 model the plan was built for (not modified).
    :param plan: the plan; the values of its int32 constants are changed in place.
    :param reader: the calibration data; iterated once per pass.
    :param samples: measure on this many of its samples, spread over it (0: all).
    :param quiet: no progress bars.
    :param workdir: where a model of 2 GB or more is staged for ONNX Runtime.
    :returns: what was corrected, for the summary.
    :raises UserError: when ONNX Runtime fails on the data, or the reader yields a
        different number of samples on a later pass.
    """
    from drpaiq_core.datasource import SpreadReader
    from drpaiq_core.emit import emit

    report = BiasCorrectionReport()
    sites = _sites(model, plan, report)
    if not sites:
        return report
    if samples:
        reader = SpreadReader(reader, samples, keep_bytes=_KEEP_BYTES)
    reference, bad, samples = _means(
        model,
        {s.output: s.axis for s in sites},
        reader,
        quiet,
        workdir,
        "bias correction: FP32 means",
    )
    report.passes = 1
    usable = []
    for site in sites:
        reason = _unusable(site.output, reference, bad, plan.constants[site.key].values)
        if reason:
            _skip(report, reason)
        else:
            usable.append(site)
    levels = sorted({s.level for s in usable})
    total_shift, total_channels = 0.0, 0
    for number, level in enumerate(levels, start=1):
        group = [s for s in usable if s.level == level]
        quantized = emit(model, plan)
        # emit keeps node names and renames a quantized output to "<name>_float": a
        # node's first output is its float value before QuantizeLinear either way.
        outputs = {n.name: n.output[0] for n in quantized.graph.node}
        _keep_upstream(quantized, [outputs[s.node] for s in group])
        current, bad, seen = _means(
            quantized,
            {outputs[s.node]: s.axis for s in group},
            reader,
            quiet,
            workdir,
            f"bias correction level {number}/{len(levels)}",
        )
        report.passes += 1
        if seen != samples:
            raise UserError(
                f"the calibration reader yielded {seen} samples in bias correction pass "
                f"{report.passes} but {samples} in pass 1; a reader must yield the same data "
                "on every pass"
            )
        for site in group:
            weight = plan.constants[site.key]
            reason = _unusable(outputs[site.node], current, bad, weight.values)
            if reason:
                _skip(report, reason)
                continue
            error = current[outputs[site.node]] - reference[site.output]
            scale = np.asarray(weight.params.scale, dtype=np.float64).reshape(-1)
            old = weight.values.astype(np.int64).reshape(-1)
            new = np.clip(np.round(old - error / scale), _INT32.min, _INT32.max).astype(np.int64)
            shift = new - old
            weight.values = new.astype(np.int32).reshape(weight.values.shape)
            report.shifts[site.key] = shift
            report.corrected += 1
            report.moved += int(np.any(shift != 0))
            total_shift += float(np.abs(shift).sum())
            total_channels += shift.size
        report.levels += 1
    report.mean_shift = total_shift / total_channels if total_channels else 0.0
    return report


def _keep_upstream(model: onnx.ModelProto, tensors: list[str]) -> None:
    """Reduce ``model`` (in place) to the nodes ``tensors`` depend on, with no graph
    outputs (the runner adds ``tensors``) and without the initializers nothing reads.

    ONNX Runtime runs every node of a session whatever it is asked for, so a level's
    pass over the whole quantized model paid for the layers below that level too; the
    nodes kept compute exactly what they did. A model with subgraphs (If, Loop, Scan),
    whose bodies may read outer tensors, is left whole.
    """
    graph = model.graph
    if any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute):
        return
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output}
    needed: set[str] = set()
    kept: set[int] = set()
    pending = list(tensors)
    while pending:
        tensor = pending.pop()
        if tensor in needed:
            continue
        needed.add(tensor)
        index = producer.get(tensor)
        if index is not None and index not in kept:
            kept.add(index)
            pending.extend(name for name in graph.node[index].input if name)
    dropped = {init.name for init in graph.initializer if init.name not in needed}
    _delete(graph.node, lambda index, _: index not in kept)
    _delete(graph.initializer, lambda _, init: init.name in dropped)
    # An older model may list its initializers as graph inputs too.
    _delete(graph.input, lambda _, value: value.name in dropped)
    del graph.output[:]


def _delete(items: Any, unwanted: Callable[[int, Any], bool]) -> None:
    """Delete the entries of a protobuf repeated field for which ``unwanted(index,
    entry)`` holds, from the back, so the indices of those still to check stay valid."""
    for index in reversed(range(len(items))):
        if unwanted(index, items[index]):
            del items[index]


def _skip(report: BiasCorrectionReport, reason: str) -> None:
    report.skipped[reason] = report.skipped.get(reason, 0) + 1


def _sites(model: onnx.ModelProto, plan: QuantPlan, report: BiasCorrectionReport) -> list[_Site]:
    """The plan's correctable int32 biases with their levels, in level then graph order."""
    nodes = {node.name: node for node in model.graph.node}
    by_node: dict[str, _Site] = {}
    for key, weight in sorted(plan.constants.items()):
        if weight.params.dtype != "int32":
            continue
        report.sites += 1
        if len(weight.users) != 1:
            _skip(report, "shared by several nodes")
            continue
        node = nodes.get(weight.users[0][0])
        if node is None or not node.output or node.op_type not in _CHANNEL_AXIS:
            _skip(report, "of an unsupported op")
            continue
        by_node[node.name] = _Site(key, node.name, node.output[0], _CHANNEL_AXIS[node.op_type])
    # The graph is in topological order: one sweep gives each tensor the largest level
    # of a biased site upstream of it.
    level_of: dict[str, int] = {}
    order: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        level = max((level_of.get(name, 0) for name in node.input), default=0)
        site = by_node.get(node.name)
        if site is not None:
            level += 1
            site.level = level
            order[node.name] = index
        for name in node.output:
            level_of[name] = level
    return sorted(by_node.values(), key=lambda s: (s.level, order.get(s.node, 0)))


def _unusable(
    tensor: str, means: Mapping[str, np.ndarray], bad: set[str], bias: np.ndarray
) -> str | None:
    """Why a measured output cannot correct ``bias``, or None."""
    if tensor in bad:
        return "with NaN/Inf outputs"
    if tensor not in means or means[tensor].size != bias.size:
        return "whose size differs from the output's channels"
    return None


def _means(
    model: onnx.ModelProto,
    tensors: dict[str, int],
    reader: Reader,
    quiet: bool,
    workdir: Path | None,
    desc: str,
) -> tuple[dict[str, np.ndarray], set[str], int]:
    """One pass over ``reader``: per-channel means of ``tensors`` (name -> channel axis),
    the tensors that had non-finite values, and the number of samples seen."""
    from drpaiq_core.calibrate import ActivationRunner

    meter = _ChannelMeans()
    with ActivationRunner(model, list(tensors), workdir=workdir) as runner:
        stats = runner.new_stats(meter)
        for name, axis in tensors.items():
            stats.states[name].axis = axis
        runner.run_pass(reader, meter, stats, 0, quiet=quiet, desc=desc)
    means: dict[str, np.ndarray] = {}
    bad: set[str] = set()
    for name in tensors:
        found = meter.compute(stats.states[name])
        if stats.nonfinite.get(name, 0):
            bad.add(name)
        elif "means" in found.details:
            means[name] = found.details["means"]
    return means, bad, stats.samples
