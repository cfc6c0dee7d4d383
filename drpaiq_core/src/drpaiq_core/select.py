"""Decide what to quantize: exclusion matchers speak first, then op quantizers.

The result is structural (which nodes, which tensors, which ties); the numbers come
later from calibration and :mod:`drpaiq_core.plan`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnx

from drpaiq_core.errors import PluginError
from drpaiq_core.graph import ModelGraph
from drpaiq_core.plugin_api import (
    BiasSpec,
    ExclusionRules,
    MatchReport,
    NodeQuantSpec,
    OpQuantizer,
    QuantOptions,
    TensorRef,
)
from drpaiq_core.plugins import Entry, PluginHost

log = logging.getLogger("drpaiq")

#: Why a node that computes no float values (shape arithmetic on int64, ArgMax) stays
#: as it is: there is nothing to quantize in it.
NO_FLOAT_OUTPUT = "no float output (integer or shape computation)"


@dataclass
class NodeChoice:
    """One node to quantize, as its op quantizer described it (indices resolved to
    tensor names, non-float and absent tensors dropped)."""

    node: str
    op_type: str
    quantizer: str
    activations: list[str]
    weights: dict[int, int | None]
    bias: BiasSpec | None
    outputs: list[str]
    same_params: list[list[str]]
    same_scale: list[list[str]]
    narrows_input: bool
    fused_bias_add: str | None
    inputs: list[str]
    requantize_narrow_inputs: bool = False
    sum_signs: tuple[int, ...] = ()


@dataclass
class Selection:
    """Everything decided before calibration.

    :ivar chosen: nodes to quantize, in graph order.
    :ivar float_nodes: node name -> why it stays float.
    :ivar reports: what each exclusion rule matched.
    :ivar range_tensors: non-constant tensors whose range calibration must measure.
    :ivar constant_activations: constant tensors quantized like activations.
    :ivar narrowed: producer output -> the clipping activation output whose range it takes.
    :ivar skip_qdq: narrowed tensors that get no QuantizeLinear/DequantizeLinear pair.
    :ivar fused_adds: Add node -> (the MatMul it completes, the bias constant that
        becomes the MatMul's int32 bias).
    :ivar notes: an op quantizer's remark (``NodeQuantSpec.note``, with the op type) ->
        the quantized nodes it was made for.
    """

    chosen: dict[str, NodeChoice] = field(default_factory=dict)
    float_nodes: dict[str, str] = field(default_factory=dict)
    reports: list[tuple[str, MatchReport]] = field(default_factory=list)
    range_tensors: list[str] = field(default_factory=list)
    constant_activations: list[str] = field(default_factory=list)
    narrowed: dict[str, str] = field(default_factory=dict)
    skip_qdq: set[str] = field(default_factory=set)
    fused_adds: dict[str, tuple[str, str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def run_exclusions(
    host: PluginHost, graph: ModelGraph, rules: ExclusionRules
) -> tuple[dict[str, str], list[tuple[str, MatchReport]]]:
    """Run every registered exclusion matcher; node name -> the first rule naming it."""
    excluded: dict[str, str] = {}
    reports: list[tuple[str, MatchReport]] = []
    for entry in host.exclusion_matchers.entries():
        matcher = entry.cls()
        for report in _checked_reports(entry, matcher.match(graph, rules), graph):
            reports.append((entry.name, report))
            if not report.nodes:
                log.warning(f"exclusion rule {report.rule} matched no node")
            else:
                log.info(f"exclusion rule {report.rule} matched {len(report.nodes)} node(s)")
            for name in report.nodes:
                excluded.setdefault(name, f"excluded by {report.rule}")
    return excluded, reports


def _checked_reports(entry: Entry[Any], found: Any, graph: ModelGraph) -> list[MatchReport]:
    """A matcher's reports, refused with a :class:`PluginError` naming the plugin unless
    they are :class:`MatchReport` objects naming nodes of the model (a report counted
    as "matched 1 node" that excludes nothing would mislead the user)."""
    plugin = entry.plugin
    where = f"exclusion matcher {entry.name!r} (plugin {plugin.name!r} from {plugin.distribution})"
    if found is None or isinstance(found, str | bytes | MatchReport):
        raise PluginError(f"{where}: match() must return a list of MatchReport, got {found!r}")
    reports = list(found)
    for report in reports:
        if not isinstance(report, MatchReport):
            raise PluginError(f"{where}: match() returned {report!r}, not a MatchReport")
        if isinstance(report.nodes, str) or not all(isinstance(n, str) for n in report.nodes):
            raise PluginError(
                f"{where}: rule {report.rule!r} reports nodes={report.nodes!r}; give a list "
                "of node names"
            )
        unknown = [n for n in report.nodes if graph.node_by_name(n) is None]
        if unknown:
            raise PluginError(
                f"{where}: rule {report.rule!r} names {len(unknown)} node(s) the model does "
                f"not have, e.g. {unknown[0]!r}"
            )
    return reports


def _checked_spec(
    spec: Any, node: onnx.NodeProto, quantizer_cls: type[OpQuantizer], host: PluginHost
) -> NodeQuantSpec | None:
    """An op quantizer's answer, refused with a :class:`PluginError` naming the plugin
    unless it is None or a :class:`NodeQuantSpec` whose indices exist on the node."""
    if spec is None:
        return None

    def refuse(problem: str) -> PluginError:
        # Which plugin registered the class is looked up only for the message.
        entry = next((e for e in host.op_quantizers.entries() if e.cls is quantizer_cls), None)
        plugin = (
            f" (plugin {entry.plugin.name!r} from {entry.plugin.distribution})" if entry else ""
        )
        return PluginError(
            f"op quantizer {quantizer_cls.PLUGIN_NAME!r}{plugin}, node {node.name!r}: {problem}"
        )

    if not isinstance(spec, NodeQuantSpec):
        raise refuse(
            f"quantize_node() must return a NodeQuantSpec or None, got {type(spec).__name__}"
        )
    checks = [
        ("activations", spec.activations, len(node.input)),
        ("weights", tuple(spec.weights), len(node.input)),
        ("outputs", spec.outputs, len(node.output)),
    ]
    for field_name, indices, count in checks:
        if isinstance(indices, int) or not all(isinstance(i, int) for i in indices):
            raise refuse(f"NodeQuantSpec.{field_name} must be a tuple of indices, got {indices!r}")
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            side = "output" if field_name == "outputs" else "input"
            raise refuse(
                f"NodeQuantSpec.{field_name} has index {bad[0]}, but the {node.op_type} node "
                f"has {count} {side}(s)"
            )
    return spec


def _resolve(node: onnx.NodeProto, ref: TensorRef) -> str:
    kind, index = ref
    names = node.input if kind == "in" else node.output
    return names[index] if index < len(names) else ""


def select(
    host: PluginHost, graph: ModelGraph, rules: ExclusionRules, options: QuantOptions
) -> Selection:
    """Apply exclusions and ask op quantizers about every remaining node."""
    selection = Selection()
    excluded, selection.reports = run_exclusions(host, graph, rules)
    for node in graph.nodes:
        if node.name in excluded:
            selection.float_nodes[node.name] = excluded[node.name]
            continue
        if node.domain not in ("", "ai.onnx"):
            selection.float_nodes[node.name] = f"custom domain {node.domain!r}"
            continue
        if not any(graph.is_float(name) for name in node.output if name):
            selection.float_nodes[node.name] = NO_FLOAT_OUTPUT
            continue
        quantizer_cls = host.op_quantizers.find(node.op_type)
        if quantizer_cls is None:
            selection.float_nodes[node.name] = f"no op quantizer for {node.op_type}"
            continue
        quantizer = quantizer_cls()
        spec = _checked_spec(
            quantizer.quantize_node(node, graph, options), node, quantizer_cls, host
        )
        if spec is None:
            selection.float_nodes[node.name] = quantizer.float_reason(node, graph)
            continue
        choice = _choice(node, graph, spec, quantizer_cls.PLUGIN_NAME)
        if choice is None:
            selection.float_nodes[node.name] = "no float tensor to quantize"
            continue
        selection.chosen[node.name] = choice
        if spec.note:
            selection.notes.setdefault(f"{node.op_type} ({spec.note})", []).append(node.name)
    _fuse_bias_adds(graph, selection)
    _narrow_activations(graph, selection, options)
    _collect_tensors(graph, selection)
    return selection


def _choice(
    node: onnx.NodeProto, graph: ModelGraph, spec: NodeQuantSpec, quantizer: str
) -> NodeChoice | None:
    def usable(name: str) -> bool:
        return bool(name) and graph.is_float(name)

    weights = {
        i: axis
        for i, axis in spec.weights.items()
        if i < len(node.input) and usable(node.input[i]) and graph.is_constant_name(node.input[i])
    }
    activations = [
        node.input[i] for i in spec.activations if i < len(node.input) and usable(node.input[i])
    ]
    # A "weight" that is not constant (MatMul of two activations) is an activation.
    for i in spec.weights:
        if i < len(node.input) and usable(node.input[i]) and i not in weights:
            activations.append(node.input[i])
    bias = spec.bias
    if bias is not None and (
        bias.bias >= len(node.input)
        or not node.input[bias.bias]
        or not graph.is_constant_name(node.input[bias.bias])
        or bias.weight not in weights
        or node.input[bias.activation] not in activations
    ):
        bias = None
    outputs = [
        node.output[i] for i in spec.outputs if i < len(node.output) and usable(node.output[i])
    ]
    if not (activations or weights or outputs):
        return None
    groups = [
        [t for t in (_resolve(node, ref) for ref in group) if usable(t)]
        for group in spec.same_params
    ]
    scale_groups = [
        [t for t in (_resolve(node, ref) for ref in group) if usable(t)]
        for group in spec.same_scale
    ]
    return NodeChoice(
        node=node.name,
        op_type=node.op_type,
        quantizer=quantizer,
        activations=list(dict.fromkeys(activations)),
        weights=weights,
        bias=bias,
        outputs=outputs,
        same_params=[g for g in groups if len(g) > 1],
        same_scale=[g for g in scale_groups if len(g) > 1],
        narrows_input=spec.narrows_input,
        fused_bias_add=spec.fused_bias_add,
        inputs=list(node.input),
        requantize_narrow_inputs=spec.requantize_narrow_inputs,
        sum_signs=tuple(spec.sum_signs) if len(spec.sum_signs) == len(node.input) else (),
    )


def _fuse_bias_adds(graph: ModelGraph, selection: Selection) -> None:
    """MatMul + Add(constant): the Add's constant becomes the MatMul's int32 bias; the
    MatMul's output gets no QDQ and the Add's output is quantized instead."""
    for choice in list(selection.chosen.values()):
        add_name = choice.fused_bias_add
        if not add_name or add_name not in selection.chosen:
            choice.fused_bias_add = None
            continue
        add = graph.node_by_name(add_name)
        if add is None:
            choice.fused_bias_add = None
            continue
        matmul_out = choice.outputs[0] if choice.outputs else None
        bias_name = next((t for t in add.input if t != matmul_out), None)
        if matmul_out is None or bias_name is None or not graph.is_constant_name(bias_name):
            choice.fused_bias_add = None
            continue
        add_choice = selection.chosen[add_name]
        selection.fused_adds[add_name] = (choice.node, bias_name)
        add_choice.activations = []
        add_choice.same_scale = []
        add_choice.same_params = []
        add_choice.quantizer = f"{choice.quantizer} (BiasAdd)"
        choice.outputs = []


def _narrow_activations(graph: ModelGraph, selection: Selection, options: QuantOptions) -> None:
    for choice in selection.chosen.values():
        if not choice.narrows_input or not choice.inputs or not choice.outputs:
            continue
        source = choice.inputs[0]
        producer = graph.producer(source)
        if producer is None or producer.name not in selection.chosen:
            continue
        producer_choice = selection.chosen[producer.name]
        fused_into = producer.name in selection.fused_adds
        if source not in producer_choice.outputs and not fused_into:
            continue
        if len(graph.consumers(source)) != 1 or graph.is_graph_output(source):
            continue
        selection.narrowed[source] = choice.outputs[0]
        if not options.activation_symmetric:
            # ONNX Runtime folds Relu/Clip into the following QuantizeLinear when its
            # zero point sits at the bottom of the range, so the producer fuses into an
            # integer kernel without a QDQ pair of its own.
            selection.skip_qdq.add(source)
            if source in producer_choice.outputs:
                producer_choice.outputs.remove(source)
            choice.activations = [t for t in choice.activations if t != source]
            choice.same_params = [[t for t in g if t != source] for g in choice.same_params]
            choice.same_params = [g for g in choice.same_params if len(g) > 1]


def _collect_tensors(graph: ModelGraph, selection: Selection) -> None:
    needed: dict[str, None] = {}
    constants: dict[str, None] = {}
    for choice in selection.chosen.values():
        for tensor in [*choice.activations, *choice.outputs]:
            if graph.is_constant_name(tensor):
                constants[tensor] = None
            elif tensor not in selection.skip_qdq:
                needed[tensor] = None
    selection.range_tensors = list(needed)
    selection.constant_activations = list(constants)
