"""Built-in op quantizers: what each common CNN op needs to run in INT8.

Each class answers with a :class:`~drpaiq_core.plugin_api.NodeQuantSpec`; none of
them touches the graph. The choices follow what INT8 accelerators and ONNX Runtime's
integer kernels expect:

* compute ops (Conv, Gemm, MatMul) take int8 activations and per-channel int8
  weights, with an int32 bias whose scale is input scale x weight scale;
* Add (and Sub) inputs share one scale so INT8 values add directly;
* Concat inputs share the output's scale and zero point, so it is a pure copy;
* data-movement ops (Reshape, Transpose, MaxPool, ...) keep their input's
  parameters: no requantization;
* Relu and Clip right after a compute op narrow that op's output range instead of
  adding a second QuantizeLinear/DequantizeLinear pair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from drpaiq_core.plugin_api import BiasSpec, GraphView, NodeQuantSpec, OpQuantizer, QuantOptions

if TYPE_CHECKING:
    import onnx

IN0: tuple[str, int] = ("in", 0)
OUT0: tuple[str, int] = ("out", 0)


class ConvQuantizer(OpQuantizer):
    """Conv: activation input 0, weight per output channel (axis 0), int32 bias."""

    PLUGIN_NAME = "conv"
    DESCRIPTION = "Conv with per-output-channel int8 weights and int32 bias"
    OP_TYPES = ("Conv",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        return _convolution(node, 0 if options.per_channel else None)


def _convolution(node: onnx.NodeProto, axis: int | None) -> NodeQuantSpec:
    """Input 0 an activation, input 1 the weight (per channel along ``axis``), input 2
    (if any) the int32 bias, output 0 quantized."""
    bias = BiasSpec(bias=2, activation=0, weight=1) if len(node.input) > 2 else None
    return NodeQuantSpec(activations=(0,), weights={1: axis}, bias=bias, outputs=(0,))


class ConvTransposeQuantizer(OpQuantizer):
    """ConvTranspose: weight [C_in, C_out/group, ...], per output channel (axis 1)."""

    PLUGIN_NAME = "conv_transpose"
    DESCRIPTION = "ConvTranspose with per-output-channel int8 weights and int32 bias"
    OP_TYPES = ("ConvTranspose",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        group = graph.attribute(node, "group", 1)
        # With groups the output channels are not one axis of the weight: per tensor.
        return _convolution(node, 1 if options.per_channel and group == 1 else None)


class GemmQuantizer(OpQuantizer):
    """Gemm (a fully connected layer): weight per output feature, int32 bias."""

    PLUGIN_NAME = "gemm"
    DESCRIPTION = "Gemm with per-output-feature int8 weights and int32 bias"
    OP_TYPES = ("Gemm",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        if graph.attribute(node, "transA", 0):
            return None
        if graph.constant(node.input[1]) is None:
            return NodeQuantSpec(activations=(0, 1), outputs=(0,))
        axis = (0 if graph.attribute(node, "transB", 0) else 1) if options.per_channel else None
        bias = None
        if len(node.input) > 2 and node.input[2]:
            value = graph.constant(node.input[2])
            alpha = graph.attribute(node, "alpha", 1.0)
            beta = graph.attribute(node, "beta", 1.0)
            # The int32 bias is added at input x weight scale: only valid for alpha=beta=1
            # and a 1-D bias (one value per output feature).
            if value is not None and value.ndim == 1 and alpha == 1.0 and beta == 1.0:
                bias = BiasSpec(bias=2, activation=0, weight=1)
        return NodeQuantSpec(activations=(0,), weights={1: axis}, bias=bias, outputs=(0,))

    def float_reason(self, node: onnx.NodeProto, graph: GraphView) -> str:
        return "Gemm with transA: no per-feature weight layout (kept float)"


class MatMulQuantizer(OpQuantizer):
    """MatMul: a constant right-hand side is a weight per output feature (last axis);
    an ``Add`` of a constant right after it is the layer's bias (Keras BiasAdd)."""

    PLUGIN_NAME = "matmul"
    DESCRIPTION = "MatMul (+ BiasAdd as int32 bias) with per-output-feature int8 weights"
    OP_TYPES = ("MatMul",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        weight = graph.constant(node.input[1])
        if weight is None:
            return NodeQuantSpec(activations=(0, 1), outputs=(0,))
        if weight.ndim != 2:
            return NodeQuantSpec(activations=(0,), weights={1: None}, outputs=(0,))
        axis = 1 if options.per_channel else None
        return NodeQuantSpec(
            activations=(0,),
            weights={1: axis},
            outputs=(0,),
            fused_bias_add=_bias_add(node, graph, weight.shape[1]),
        )


def _bias_add(node: onnx.NodeProto, graph: GraphView, features: int) -> str | None:
    out = node.output[0]
    consumers = graph.consumers(out)
    if len(consumers) != 1 or graph.is_graph_output(out):
        return None
    add = consumers[0]
    if add.op_type != "Add":
        return None
    other = add.input[1] if add.input[0] == out else add.input[0]
    value = graph.constant(other)
    if value is None or value.size != features or value.shape[-1:] != (features,):
        return None
    return add.name


class AddQuantizer(OpQuantizer):
    """Add and Sub: both inputs share one scale so INT8 values combine directly; each
    input's range is cut to the values that can still reach the output's range."""

    PLUGIN_NAME = "add"
    DESCRIPTION = "Add/Sub with inputs sharing one scale"
    OP_TYPES = ("Add", "Sub")

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        if _is_epsilon_add(node, graph) or _is_input_normalization(node, graph):
            return None
        return NodeQuantSpec(
            activations=(0, 1),
            outputs=(0,),
            same_scale=((("in", 0), ("in", 1)),),
            sum_signs=(1, -1) if node.op_type == "Sub" else (1, 1),
        )

    def float_reason(self, node: onnx.NodeProto, graph: GraphView) -> str:
        return INPUT_REASON if _is_input_normalization(node, graph) else EPSILON_REASON


#: Why a normalization's ``variance + epsilon`` stays float (see :func:`_is_epsilon_add`).
EPSILON_REASON = "a normalization's variance + epsilon: in INT8 the epsilon would vanish"
#: Why a normalization's variance ReduceMean stays float.
VARIANCE_REASON = "a normalization's variance: kept float with its epsilon Add"


#: Why the in-graph normalization of a model input stays float.
INPUT_REASON = (
    "normalizes the model input with constants: kept float, the first layer's input is "
    "quantized instead"
)

#: Element-wise ops that, with a constant operand, make up an input normalization.
_NORMALIZING_OPS = ("Sub", "Add", "Mul", "Div")


def _is_input_normalization(node: onnx.NodeProto, graph: GraphView) -> bool:
    """Part of ``(x - mean) / std`` (or ``x * scale + offset``) written into the graph
    right at a model input: an element-wise op with one constant operand whose other
    operand is a model input or the output of such an op.

    Quantized, it would round the input twice more before the first layer, and round
    the constant (a per-channel mean) to the input's scale: an error of the same sign
    on every pixel of a channel. On an export with ``(x - mean) / std`` inside, the
    output's SQNR fell by 3.4 dB. Kept float, the normalized input is quantized once,
    at the first layer.
    """
    if node.op_type not in _NORMALIZING_OPS or len(node.input) != 2:
        return False
    constants = [graph.constant(name) is not None for name in node.input]
    if sum(constants) != 1:
        return False
    source = node.input[constants.index(False)]
    producer = graph.producer(source)
    if producer is None:
        return True  # a model input (not a constant: checked above)
    return _is_input_normalization(producer, graph)


def _is_epsilon_add(node: onnx.NodeProto, graph: GraphView) -> bool:
    """``variance + epsilon`` ahead of Sqrt/Reciprocal/Div in a normalization: in INT8
    the epsilon vanishes and small variances blow up the division, so it stays float."""
    if node.op_type != "Add":
        return False
    scalars = [graph.constant(name) for name in node.input]
    if not any(value is not None and value.size == 1 for value in scalars):
        return False
    consumers = graph.consumers(node.output[0])
    return bool(consumers) and all(c.op_type in ("Sqrt", "Reciprocal", "Div") for c in consumers)


class ElementwiseQuantizer(OpQuantizer):
    """Ops whose inputs and output each get their own parameters."""

    PLUGIN_NAME = "elementwise"
    DESCRIPTION = "Mul, averaging (pools, ReduceMean), Sigmoid, Tanh, Softmax, ...: own parameters"
    OP_TYPES = (
        "Mul",
        "AveragePool",
        "GlobalAveragePool",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softmax",
        "ReduceMean",
    )

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        if node.op_type == "ReduceMean" and any(
            _is_epsilon_add(c, graph) or c.op_type in ("Sqrt", "Reciprocal")
            for c in graph.consumers(node.output[0])
        ):
            return None  # a normalization's variance: see _is_epsilon_add
        if _is_input_normalization(node, graph):
            return None
        inputs = tuple(range(min(len(node.input), 2)))
        return NodeQuantSpec(activations=inputs, outputs=(0,))

    def float_reason(self, node: onnx.NodeProto, graph: GraphView) -> str:
        return INPUT_REASON if _is_input_normalization(node, graph) else VARIANCE_REASON


class NormalizationQuantizer(OpQuantizer):
    """A BatchNormalization that no Conv absorbed (pre-activation ResNets): quantized
    data in and out, its scale an int8 per-channel weight and its bias int32 (input
    scale x scale's scale), as an INT8-only accelerator runs it; mean and variance stay
    float constants."""

    PLUGIN_NAME = "batch_norm"
    DESCRIPTION = "BatchNormalization not folded into a Conv: int8 scale, int32 bias"
    OP_TYPES = ("BatchNormalization",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        if len(node.output) != 1:
            return None  # training-mode BatchNormalization
        axis = 0 if options.per_channel else None
        return NodeQuantSpec(
            activations=(0,),
            weights={1: axis},
            bias=BiasSpec(bias=2, activation=0, weight=1),
            outputs=(0,),
        )

    def float_reason(self, node: onnx.NodeProto, graph: GraphView) -> str:
        return "training-mode BatchNormalization (several outputs)"


class ClippingActivationQuantizer(OpQuantizer):
    """Relu and Clip: folded into the producer's range when they follow a compute op;
    otherwise the output keeps the input's parameters."""

    PLUGIN_NAME = "relu_clip"
    DESCRIPTION = "Relu/Clip narrowing the producer's range"
    OP_TYPES = ("Relu", "Clip")

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        return NodeQuantSpec(
            activations=(0,), outputs=(0,), same_params=((IN0, OUT0),), narrows_input=True
        )


class ConcatQuantizer(OpQuantizer):
    """Concat: every input shares the output's scale and zero point (a pure copy). An
    input much narrower than the output (or tied to much wider tensors) is requantized
    on its edge instead of forcing the output's scale onto its other readers."""

    PLUGIN_NAME = "concat"
    DESCRIPTION = "Concat with inputs sharing the output's parameters"
    OP_TYPES = ("Concat",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        n = len(node.input)
        group = (*tuple(("in", i) for i in range(n)), OUT0)
        return NodeQuantSpec(
            activations=tuple(range(n)),
            outputs=(0,),
            same_params=(group,),
            requantize_narrow_inputs=True,
        )


class PassThroughQuantizer(OpQuantizer):
    """Data-movement ops: the output keeps the input's parameters (no requantization).
    MaxPool and Transpose are quantized also as the first or last layer."""

    PLUGIN_NAME = "pass_through"
    DESCRIPTION = "Reshape/Transpose/MaxPool/Resize/...: output keeps the input's parameters"
    OP_TYPES: ClassVar[tuple[str, ...]] = (
        "MaxPool",
        "GlobalMaxPool",
        "Resize",
        "Upsample",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Pad",
        "Identity",
        "DepthToSpace",
        "SpaceToDepth",
        "Gather",
    )

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        if node.op_type == "Pad" and graph.attribute(node, "mode", "constant") == "constant":
            value = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if value is not None and value.size and float(value.reshape(-1)[0]) != 0.0:
                return None  # a non-zero pad value would widen the range: keep it float
        return NodeQuantSpec(activations=(0,), outputs=(0,), same_params=((IN0, OUT0),))

    def float_reason(self, node: onnx.NodeProto, graph: GraphView) -> str:
        return "Pad with a non-zero constant: the pad value would widen the input's range"


class SplitQuantizer(OpQuantizer):
    """Split: every output keeps the input's parameters."""

    PLUGIN_NAME = "split"
    DESCRIPTION = "Split: outputs keep the input's parameters"
    OP_TYPES = ("Split",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        outs = tuple(range(len(node.output)))
        group = (IN0, *(("out", i) for i in outs))
        return NodeQuantSpec(activations=(0,), outputs=outs, same_params=(group,))


OP_QUANTIZERS = (
    ConvQuantizer,
    ConvTransposeQuantizer,
    GemmQuantizer,
    MatMulQuantizer,
    AddQuantizer,
    ElementwiseQuantizer,
    NormalizationQuantizer,
    ClippingActivationQuantizer,
    ConcatQuantizer,
    PassThroughQuantizer,
    SplitQuantizer,
)
