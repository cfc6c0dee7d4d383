"""What plugin authors subclass and receive: readers, calibrators, op quantizers, matchers.

This module is the stable, documented surface for plugins. It imports only numpy and
the standard library so that registering plugins stays cheap.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from drpaiq_core.hookspecs import hookimpl

if TYPE_CHECKING:
    import onnx

__all__ = [
    "Batch",
    "BiasSpec",
    "Calibrator",
    "ExclusionMatcher",
    "ExclusionRules",
    "GraphView",
    "InputSpec",
    "MatchReport",
    "NodeQuantSpec",
    "OpQuantizer",
    "QuantOptions",
    "Reader",
    "ReaderContext",
    "TensorRange",
    "TensorRef",
    "hookimpl",
]


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One model input as the reader sees it.

    :ivar name: the graph input name, the key of the feed.
    :ivar shape: dimensions; ``int`` where fixed, ``None`` where dynamic.
    :ivar dtype: the numpy dtype ONNX Runtime expects (``float32`` for images).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]


@dataclass
class ReaderContext:
    """Everything a reader may need, assembled by the core from the user's options.

    :ivar dataset: the folder or file the user pointed at (``--calibrate_dataset``,
        ``--dataset``); ``None`` where the reader needs none.
    :ivar model_path: the FP32 model, for readers that inspect it themselves.
    :ivar inputs: the model's inputs, in graph order.
    :ivar norm_mean: per-channel mean (R, G, B) subtracted from pixel/255, if given.
    :ivar norm_std: per-channel std divided after the mean, if given.
    :ivar size_limit: at most this many samples; 0 means all.
    :ivar batch_size: samples per yielded batch.
    :ivar input_shape: the user's ``--input-shape`` for models whose H or W is dynamic.
    :ivar labeled: yield class labels too (evaluation on a folder of class sub-folders).
    :ivar options: advanced ``key value`` options the user gave, as strings.
    :ivar warn: call with one line to warn the user (kept on stderr even with --quiet).
    """

    dataset: Path | None
    model_path: Path | None
    inputs: Sequence[InputSpec]
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None
    size_limit: int = 0
    batch_size: int = 1
    input_shape: tuple[int, ...] | None = None
    labeled: bool = False
    options: Mapping[str, str] = field(default_factory=dict)
    warn: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class Batch:
    """One batch of input feeds.

    :ivar feeds: input name -> array with the batch as the first dimension.
    :ivar labels: class index per sample when the context asked for labels.
    :ivar sources: where each sample came from (file names), for messages.
    """

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    sources: tuple[str, ...] = ()


class Reader(abc.ABC):
    """Base class of data readers.

    Subclasses declare ``PLUGIN_NAME`` (what ``--reader`` selects) and a one-line
    ``DESCRIPTION``. Construction must be cheap and must raise
    :class:`drpaiq_core.errors.UserError` for bad user input (missing folder, no
    images, wrong norm values) with one clear line.
    """

    PLUGIN_NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""
    #: Advanced options (bare ``key value`` pairs) this plugin reads: name -> one line
    #: of help. The core accepts these names besides its own and hands the values on
    #: as strings; checking them is the plugin's job.
    OPTIONS: ClassVar[Mapping[str, str]] = {}

    def __init__(self, context: ReaderContext) -> None:
        self.context = context

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples the reader will yield in one pass (for progress bars)."""

    @abc.abstractmethod
    def batches(self) -> Iterator[Batch]:
        """Yield the data once, in a deterministic order. May be called again for a
        second pass and must then yield the same data.

        Calibration iterates it in a background thread (one iteration at a time, never
        two at once), so that images are decoded while ONNX Runtime runs: do not rely
        on running in the main thread (installing signal handlers, for example)."""


# ---------------------------------------------------------------------------
# Calibrators
# ---------------------------------------------------------------------------


@dataclass
class TensorRange:
    """The range a calibrator computed for one tensor.

    :ivar rmin: lower end of the real range to represent.
    :ivar rmax: upper end.
    :ivar details: optional data for debugging (histogram, thresholds, ...), JSON-able
        values or numpy arrays.
    """

    rmin: float
    rmax: float
    details: dict[str, Any] = field(default_factory=dict)


class Calibrator(abc.ABC):
    """Base class of calibrators: a mergeable statistic of one tensor's values.

    The core keeps one state per tensor. For each pass (``PASSES`` of them, 1 or 2)
    it runs the reader over all data and calls :meth:`collect` with every batch's
    finite values; between passes it calls :meth:`next_pass`. States of data split
    into chunks combine with :meth:`merge` and must give exactly the result of one
    pass. A state's size must not depend on the number of batches.

    :ivar options: advanced options, e.g. ``percentile_value``, ``num_bins``. The core
        also sets ``activation_symmetric`` (``"True"`` or ``"False"``) to the grid the
        ranges will be quantized to, so that a calibrator can fit a range to the levels
        it gets.
    """

    PLUGIN_NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""
    #: Advanced options (bare ``key value`` pairs) this plugin reads: name -> one line
    #: of help. The core accepts these names besides its own and hands the values on
    #: as strings; checking them is the plugin's job.
    OPTIONS: ClassVar[Mapping[str, str]] = {}
    #: Names users may also select this calibrator by (e.g. the reference's spelling).
    ALIASES: ClassVar[tuple[str, ...]] = ()
    #: How many passes over the data the calibrator needs.
    PASSES: ClassVar[int] = 1

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Mapping[str, Any] = dict(options or {})

    @abc.abstractmethod
    def new_state(self) -> Any:
        """A fresh, empty state."""

    @abc.abstractmethod
    def collect(self, state: Any, values: np.ndarray, pass_index: int) -> Any:
        """Fold one batch of finite float32 ``values`` (any shape) into ``state``.

        Called from a background thread, one call at a time and in the order of the
        batches, while the next batches are read and run.

        :returns: the updated state (may be ``state`` itself, mutated).
        """

    @abc.abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """Combine two states collected in the same pass over disjoint data."""

    def next_pass(self, state: Any, pass_index: int) -> Any:
        """Prepare ``state`` (complete for pass ``pass_index - 1``) for pass ``pass_index``."""
        return state

    @abc.abstractmethod
    def compute(self, state: Any) -> TensorRange:
        """The tensor's range from the final state."""

    def report(self, ranges: Mapping[str, TensorRange], debug_dir: Path | None) -> None:
        """Called once after all ranges are computed; write debug output into
        ``debug_dir`` when it is given. The default does nothing."""
        return None


# ---------------------------------------------------------------------------
# Op quantizers
# ---------------------------------------------------------------------------

#: A reference to a node's tensor: ``("in", i)`` or ``("out", i)``.
TensorRef = tuple[str, int]


@dataclass(frozen=True)
class BiasSpec:
    """Which inputs make a biased node: bias = int32 with scale s(activation) x s(weight).

    :ivar bias: index of the bias input.
    :ivar activation: index of the activation input whose scale multiplies in.
    :ivar weight: index of the weight input whose (per-channel) scale multiplies in.
    """

    bias: int
    activation: int
    weight: int


@dataclass
class NodeQuantSpec:
    """An op quantizer's answer for one node: plain data, no graph edits.

    :ivar activations: input indices quantized as activations (QuantizeLinear /
        DequantizeLinear in front of the node).
    :ivar weights: input index -> channel axis for per-channel int8 weights (the
        input must be a constant); ``None`` as axis means per-tensor.
    :ivar bias: the int32 bias, if any (its input must be a constant).
    :ivar outputs: output indices quantized.
    :ivar same_params: groups of tensors that must share scale and zero point.
    :ivar same_scale: groups of tensors that must share the scale only.
    :ivar narrows_input: the node is a clipping activation (Relu, Clip): when the
        producer of input 0 is quantized and feeds only this node, the producer's
        output takes this node's (narrower) output range instead of getting a
        QuantizeLinear/DequantizeLinear pair of its own.
    :ivar fused_bias_add: (for MatMul) the name of a following ``Add`` of a constant
        whose constant becomes this node's int32 bias.
    :ivar requantize_narrow_inputs: for this node's ``same_params`` groups that hold
        its output (Concat): an input that other nodes read too, and whose parameters
        (with everything already tied to it) differ from the output's by more than a
        factor of 1.5 in scale, keeps them and is requantized to the output's parameters
        on its edge into this node. The tie holds at the node either way; this keeps it
        from coarsening the other readers of a narrow tensor (a sigmoid score
        concatenated with box coordinates).
    :ivar sum_signs: the output is the sum of the inputs with these signs, one per
        input (Add: ``(1, 1)``, Sub: ``(1, -1)``). The output's QuantizeLinear saturates
        at the ends of its range (with a Relu/Clip folded in, at the activation's range),
        and an input value beyond what can still reach that range gives the saturated
        output whatever the other inputs hold. The planner cuts each input's range
        there, for this node only, so the input gets a finer step at no cost: a
        residual ``Add`` followed by ReLU6 with a ``[0, 6]`` skip input needs its other
        input only over ``[-6, 6]``.
    :ivar note: a short remark for the summary: one line per op type and remark,
        ``Softplus (a lookup table on DRP-AI): 3 node(s), e.g. body/softplus``.
    """

    activations: tuple[int, ...] = ()
    weights: Mapping[int, int | None] = field(default_factory=dict)
    bias: BiasSpec | None = None
    outputs: tuple[int, ...] = ()
    same_params: tuple[tuple[TensorRef, ...], ...] = ()
    same_scale: tuple[tuple[TensorRef, ...], ...] = ()
    narrows_input: bool = False
    fused_bias_add: str | None = None
    requantize_narrow_inputs: bool = False
    sum_signs: tuple[int, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class QuantOptions:
    """The user's quantization choices, as op quantizers see them.

    :ivar activation_type: ``"int8"`` or ``"uint8"``.
    :ivar activation_symmetric: symmetric activations (zero point at the middle).
    :ivar per_channel: per-channel weights.
    :ivar extra: remaining advanced options, as strings.
    """

    activation_type: str = "int8"
    activation_symmetric: bool = False
    per_channel: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)


class GraphView(abc.ABC):
    """Read-only questions about the model that op quantizers and matchers may ask."""

    @property
    @abc.abstractmethod
    def nodes(self) -> Sequence[onnx.NodeProto]:
        """All nodes, in topological order."""

    @abc.abstractmethod
    def producer(self, tensor: str) -> onnx.NodeProto | None:
        """The node whose output ``tensor`` is, or None (graph input, constant)."""

    @abc.abstractmethod
    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """Nodes that read ``tensor``, in graph order."""

    @abc.abstractmethod
    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""

    @abc.abstractmethod
    def is_graph_output(self, tensor: str) -> bool:
        """Whether ``tensor`` is an output of the model."""

    @abc.abstractmethod
    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        """The tensor's shape if known (from shape inference or calibration)."""

    @abc.abstractmethod
    def is_float(self, tensor: str) -> bool:
        """Whether the tensor is float32 (only float tensors are quantized)."""

    @abc.abstractmethod
    def attribute(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        """A node attribute's value (ints, floats, strings decoded), or ``default``."""


class OpQuantizer(abc.ABC):
    """Base class of op quantizers.

    ``OP_TYPES`` lists the op types handled; the engine asks :meth:`quantize_node`
    about every node of those types that no exclusion matched.
    """

    PLUGIN_NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""
    #: Advanced options (bare ``key value`` pairs) this plugin reads: name -> one line
    #: of help. The core accepts these names besides its own and hands the values on
    #: as strings; checking them is the plugin's job.
    OPTIONS: ClassVar[Mapping[str, str]] = {}
    OP_TYPES: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        """Say how ``node`` is quantized, or return None to leave it in float.

        Only float tensors are quantized; the engine ignores indices of
        non-float or absent (empty-named) inputs and outputs.
        """

    def float_reason(self, node: onnx.NodeProto, graph: GraphView) -> str:
        """Why :meth:`quantize_node` left ``node`` in float, for the summary. Override
        to name the case (the default names only this plugin)."""
        return f"{self.PLUGIN_NAME} left it in float"


# ---------------------------------------------------------------------------
# Exclusion matchers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExclusionRules:
    """The user's exclusion rules, as given.

    :ivar op_types: op types to leave in float (case-insensitive).
    :ivar node_names: node names to leave in float.
    :ivar pattern_file: a CSV of activation-function patterns.
    :ivar options: all advanced options (for matchers with rules of their own).
    """

    op_types: tuple[str, ...] = ()
    node_names: tuple[str, ...] = ()
    pattern_file: Path | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass
class MatchReport:
    """What one rule matched.

    :ivar rule: the rule as the user wrote it (``"op type Tanh"``, ``"rules.csv:3"``).
    :ivar nodes: names of the nodes it leaves in float.
    """

    rule: str
    nodes: list[str] = field(default_factory=list)


class ExclusionMatcher(abc.ABC):
    """Base class of exclusion matchers."""

    PLUGIN_NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""
    #: Advanced options (bare ``key value`` pairs) this plugin reads: name -> one line
    #: of help. The core accepts these names besides its own and hands the values on
    #: as strings; checking them is the plugin's job.
    OPTIONS: ClassVar[Mapping[str, str]] = {}

    @abc.abstractmethod
    def match(self, graph: GraphView, rules: ExclusionRules) -> list[MatchReport]:
        """One report per rule of this matcher's kind that the user gave (empty when
        the user gave none). Raise :class:`drpaiq_core.errors.UserError` for a
        malformed rule, naming where it is."""
