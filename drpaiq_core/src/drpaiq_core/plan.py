"""Turn a selection plus calibrated ranges into a quantization plan: plain data.

The plan says, for every tensor that will be quantized, its dtype, scale, zero point
and axis, after the ties op quantizers asked for (shared parameters, shared scale,
narrowed producers). :mod:`drpaiq_core.emit` turns it into a graph; tests inspect it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drpaiq_core.errors import UserError
from drpaiq_core.graph import ModelGraph
from drpaiq_core.plugin_api import QuantOptions, TensorRange
from drpaiq_core.qparams import (
    QParams,
    activation_params,
    activation_scale,
    bias_params,
    bias_weight_scale_floor,
    weight_params,
    widen,
)
from drpaiq_core.select import NodeChoice, Selection

log = logging.getLogger("drpaiq")


@dataclass
class WeightPlan:
    """A constant quantized to int8 (weights) or int32 (biases).

    :ivar source: the float constant's name.
    :ivar params: its quantization parameters.
    :ivar values: the quantized values.
    :ivar users: (node name, input index) pairs that read the dequantized value.
    """

    source: str
    params: QParams
    values: np.ndarray
    users: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class QuantPlan:
    """The complete plan of one run.

    :ivar activations: tensor -> parameters of its QuantizeLinear/DequantizeLinear pair.
    :ivar constant_activations: constants quantized with activation parameters (they
        get a DequantizeLinear only).
    :ivar constants: quantized weights and biases, keyed by the name of the int tensor.
    :ivar quantized_nodes: node -> (op type, quantizer that decided).
    :ivar float_nodes: node -> why it stays float.
    :ivar ranges: tensor -> calibrated (rmin, rmax) before ties.
    :ivar edges: (node, input index) -> parameters of a requantization on that edge only
        (an Add input brought to the scale it shares with the other input, a narrow
        Concat input brought to the output's parameters).
    :ivar cuts: (node, input index) -> the input's range at that node, cut to the
        values that can still reach the output's range (Add, Sub: see
        ``NodeQuantSpec.sum_signs``).
    """

    activations: dict[str, QParams] = field(default_factory=dict)
    constant_activations: dict[str, np.ndarray] = field(default_factory=dict)
    constants: dict[str, WeightPlan] = field(default_factory=dict)
    quantized_nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    float_nodes: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    edges: dict[tuple[str, int], QParams] = field(default_factory=dict)
    cuts: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "activations": {k: v.to_dict() for k, v in sorted(self.activations.items())},
            "constants": {
                k: {"source": w.source, **w.params.to_dict(), "users": w.users}
                for k, w in sorted(self.constants.items())
            },
            "quantized_nodes": {k: list(v) for k, v in self.quantized_nodes.items()},
            "float_nodes": dict(self.float_nodes),
            "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
            "edges": {f"{n}:{i}": p.to_dict() for (n, i), p in sorted(self.edges.items())},
            "cuts": {f"{n}:{i}": list(c) for (n, i), c in sorted(self.cuts.items())},
        }


class _UnionFind:
    """Tensors tied to share parameters, with the joint (widened) range of each group."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.range: dict[str, tuple[float, float]] = {}

    def add(self, x: str, rng: tuple[float, float]) -> None:
        self.parent.setdefault(x, x)
        self.range[x] = rng

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The lexically smaller root wins so the result does not depend on order.
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra
            (alo, ahi), (blo, bhi) = self.range[ra], self.range[rb]
            self.range[ra] = (min(alo, blo), max(ahi, bhi))


#: A Concat input whose values something else reads too is tied to the output only
#: while neither side's scale would grow by more than this factor; beyond it the input
#: is requantized on its edge into the Concat. (An input only the Concat reads is always
#: tied: it then rounds once, straight to the output's parameters.)
_TIE_SCALE_RATIO = 1.5


def _read_elsewhere(groups: _UnionFind, member: str, node: str, graph: ModelGraph) -> bool:
    """Whether anything but ``node`` reads the values of ``member``'s group: a graph
    output, or a reader of one of its tensors that is not ``node`` and whose outputs
    are not in the group either (a pass-through op inside the group reads it on)."""
    root = groups.find(member)
    tensors = {t for t in groups.parent if groups.find(t) == root}
    for tensor in tensors:
        if graph.is_graph_output(tensor):
            return True
        for reader in graph.consumers(tensor):
            if reader.name != node and not tensors.intersection(reader.output):
                return True
    return False


def _far_apart(groups: _UnionFind, a: str, b: str, options: QuantOptions) -> bool:
    """Whether tying the groups of ``a`` and ``b`` would coarsen either one's scale by
    more than :data:`_TIE_SCALE_RATIO`."""
    dtype, symmetric = options.activation_type, options.activation_symmetric
    (alo, ahi), (blo, bhi) = groups.range[groups.find(a)], groups.range[groups.find(b)]
    joint = activation_scale(min(alo, blo), max(ahi, bhi), dtype, symmetric)
    own = min(
        activation_scale(alo, ahi, dtype, symmetric), activation_scale(blo, bhi, dtype, symmetric)
    )
    return joint > _TIE_SCALE_RATIO * own


def build_plan(
    selection: Selection,
    graph: ModelGraph,
    ranges: dict[str, TensorRange],
    options: QuantOptions,
) -> QuantPlan:
    """Resolve parameters for everything the selection chose."""
    plan = QuantPlan(float_nodes=dict(selection.float_nodes))
    dtype = options.activation_type
    symmetric = options.activation_symmetric

    tensor_range: dict[str, tuple[float, float]] = {}
    for name, rng in ranges.items():
        tensor_range[name] = (float(rng.rmin), float(rng.rmax))
    for name in selection.constant_activations:
        value = graph.constant(name)
        assert value is not None
        arr = np.asarray(value, dtype=np.float32)
        tensor_range[name] = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        plan.constant_activations[name] = arr
    for source, target in selection.narrowed.items():
        if target in tensor_range:
            tensor_range[source] = tensor_range[target]
    plan.ranges = dict(tensor_range)

    quantized: list[str] = []
    for choice in selection.chosen.values():
        for t in [*choice.activations, *choice.outputs]:
            if t not in selection.skip_qdq and t not in quantized:
                quantized.append(t)
    missing = [t for t in quantized if t not in tensor_range]
    if missing:
        raise UserError(
            f"calibration gave no range for {len(missing)} tensor(s), e.g. {missing[0]!r}; "
            "the reader produced no data that reaches them"
        )

    groups = _UnionFind()
    for t in quantized:
        groups.add(t, widen(*tensor_range[t]))
    # (node, input index, a tensor of the group whose parameters the edge takes)
    loose: list[tuple[str, int, str]] = []
    for choice in selection.chosen.values():
        for group in choice.same_params:
            members = [t for t in group if t in tensor_range and t not in selection.skip_qdq]
            anchor = next((t for t in members if t in choice.outputs), None)
            if not choice.requantize_narrow_inputs or anchor is None:
                for other in members[1:]:
                    groups.union(members[0], other)
                continue
            for member in members:
                if member == anchor or groups.find(member) == groups.find(anchor):
                    continue
                if _read_elsewhere(groups, member, choice.node, graph) and _far_apart(
                    groups, anchor, member, options
                ):
                    loose.extend(
                        (choice.node, index, anchor)
                        for index, name in enumerate(choice.inputs)
                        if name == member
                    )
                else:
                    groups.union(anchor, member)
    group_range = {groups.find(t): groups.range[groups.find(t)] for t in quantized}

    root_params = {
        root: activation_params(lo, hi, dtype, symmetric) for root, (lo, hi) in group_range.items()
    }
    for t in quantized:
        plan.activations[t] = root_params[groups.find(t)]
    for node_name, index, anchor in loose:
        member = selection.chosen[node_name].inputs[index]
        if groups.find(member) != groups.find(anchor):
            plan.edges[(node_name, index)] = root_params[groups.find(anchor)]
    _plan_shared_scales(plan, selection, graph, groups, group_range, options)

    _plan_constants(plan, selection, graph)
    for choice in selection.chosen.values():
        plan.quantized_nodes[choice.node] = (choice.op_type, choice.quantizer)
    return plan


def _plan_shared_scales(
    plan: QuantPlan,
    selection: Selection,
    graph: ModelGraph,
    groups: _UnionFind,
    group_range: dict[str, tuple[float, float]],
    options: QuantOptions,
) -> None:
    """The parameters of each node's inputs at that node: an input of a sum over its
    range cut to the values that can still reach the output's range
    (:func:`_reach_cuts`), and inputs that must share one scale (Add) at the largest of
    their scales over those ranges (all-zero members aside). An input that only this
    node reads, and that shares parameters with no other tensor, is quantized with
    them directly (one rounding); any other is requantized on its edge into this node,
    so its other consumers keep their own."""
    dtype, symmetric = options.activation_type, options.activation_symmetric
    group_size: dict[str, int] = {}
    for t in plan.activations:
        root = groups.find(t)
        group_size[root] = group_size.get(root, 0) + 1
    for choice in selection.chosen.values():
        cuts = _reach_cuts(plan, selection, graph, groups, group_range, choice)
        planned: dict[int, QParams] = {}
        for group in choice.same_scale:
            members = [t for t in group if t in plan.activations]
            if len(members) < 2:
                continue
            # A member that is exactly zero on all the data (a zero constant, a dead
            # ReLU branch) is exact at any scale; its fallback scale of 1.0 must not
            # become the other members' scale.
            live = {t for t in members if widen(*plan.ranges.get(t, (1.0, 1.0))) != (0.0, 0.0)}
            if not live:
                continue
            span = {
                index: cuts.get(index, group_range[groups.find(name)])
                for index, name in enumerate(choice.inputs)
                if name in members
            }
            shared = max(
                float(activation_params(*span[index], dtype, symmetric).scale)
                for index in span
                if choice.inputs[index] in live
            )
            for index, (lo, hi) in span.items():
                planned[index] = activation_params(lo, hi, dtype, symmetric, scale=shared)
        for index, (lo, hi) in cuts.items():
            planned.setdefault(index, activation_params(lo, hi, dtype, symmetric))
            plan.cuts[(choice.node, index)] = (lo, hi)
        for index, params in sorted(planned.items()):
            name = choice.inputs[index]
            if _same_params(params, plan.activations[name]):
                continue
            readers = {node.name for node in graph.consumers(name)}
            private = (
                readers == {choice.node}
                and group_size[groups.find(name)] == 1
                and not graph.is_graph_output(name)
                and name not in plan.constant_activations
            )
            if private:
                plan.activations[name] = params
            else:
                plan.edges[(choice.node, index)] = params


def _same_params(a: QParams, b: QParams) -> bool:
    return bool(
        a.dtype == b.dtype
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero_point, b.zero_point)
    )


def _reach_cuts(
    plan: QuantPlan,
    selection: Selection,
    graph: ModelGraph,
    groups: _UnionFind,
    group_range: dict[str, tuple[float, float]],
    choice: NodeChoice,
) -> dict[int, tuple[float, float]]:
    """For a node whose output is a signed sum of its inputs (``sum_signs``): input
    index -> its range cut to the values that can still reach the output's range.

    The output is quantized over ``[low, high]`` (its range, or with a Relu/Clip
    folded in, the activation's), and its QuantizeLinear saturates there. With the
    other inputs' signed sum in ``[s_min, s_max]`` (from their ranges), an input above
    ``high - s_min`` gives ``high`` and one below ``low - s_max`` gives ``low`` whatever
    the others hold, so the cut changes no output. Only inputs whose range it narrows
    are returned; an input read twice by the node keeps its range.
    """
    signs = choice.sum_signs
    node = graph.node_by_name(choice.node)
    if not signs or node is None or not node.output:
        return {}
    out = node.output[0]
    if out not in plan.activations:
        out = selection.narrowed.get(out, "")
    inputs = choice.inputs
    if out not in plan.activations or any(name not in plan.activations for name in inputs):
        return {}
    low, high = group_range[groups.find(out)]
    held = [group_range[groups.find(name)] for name in inputs]
    signed = [(lo, hi) if sign > 0 else (-hi, -lo) for sign, (lo, hi) in zip(signs, held)]
    total_min = sum(lo for lo, _ in signed)
    total_max = sum(hi for _, hi in signed)
    cuts: dict[int, tuple[float, float]] = {}
    for index, (name, sign) in enumerate(zip(inputs, signs)):
        if inputs.count(name) > 1 or name in plan.constant_activations:
            continue
        others_min = total_min - signed[index][0]
        others_max = total_max - signed[index][1]
        # The reach of sign * input, as a range of the input itself.
        reach = (low - others_max, high - others_min)
        if sign < 0:
            reach = (-reach[1], -reach[0])
        lo, hi = held[index]
        cut = widen(min(max(lo, reach[0]), reach[1]), min(max(hi, reach[0]), reach[1]))
        if cut != (lo, hi):
            cuts[index] = cut
    return cuts


def _plan_constants(plan: QuantPlan, selection: Selection, graph: ModelGraph) -> None:
    sites = _bias_sites(plan, selection, graph)
    # Weight scales are floored first, so that every bias computed from them fits.
    floors: dict[str, np.ndarray] = {}
    for site in sites:
        value = graph.constant(site.bias)
        assert value is not None
        floor = bias_weight_scale_floor(value, plan.activations[site.activation].scale)
        known = floors.get(site.weight)
        floors[site.weight] = floor if known is None else np.maximum(known, floor)

    weight_keys: dict[tuple[str, int | None], str] = {}

    def add_weight(tensor: str, axis: int | None, node: str, index: int) -> WeightPlan:
        key = (tensor, axis)
        if key not in weight_keys:
            value = graph.constant(tensor)
            assert value is not None
            if axis is not None and (value.ndim == 0 or not -value.ndim <= axis < value.ndim):
                axis = None
            floor = floors.get(tensor)
            if floor is not None and axis is not None and floor.size != value.shape[axis]:
                floor = np.max(floor)
            params, q = weight_params(value, axis, floor)
            if floor is not None:
                plain, _ = weight_params(value, axis)
                raised = int(np.count_nonzero(params.scale != plain.scale))
                if raised:
                    log.info(
                        f"weight {tensor!r}: scale raised on {raised} channel(s) so that "
                        "their int32 bias fits (near-zero weights with a large bias)"
                    )
            name = f"{tensor}_quantized"
            while name in plan.constants:
                name += "_"
            weight_keys[key] = name
            plan.constants[name] = WeightPlan(tensor, params, q)
        weight = plan.constants[weight_keys[key]]
        weight.users.append((node, index))
        return weight

    def add_bias(tensor: str, node: str, index: int, act: str, weight: WeightPlan) -> None:
        value = graph.constant(tensor)
        assert value is not None
        act_params = plan.activations[act]
        w_scale = weight.params.scale
        channels = int(np.asarray(value).size)
        if w_scale.size not in (1, channels):
            return  # a bias that does not match the weight's channels stays float
        params, q = bias_params(value, act_params.scale, w_scale)
        name = f"{tensor}_quantized"
        while name in plan.constants:
            name += "_"
        plan.constants[name] = WeightPlan(tensor, params, q, [(node, index)])

    for choice in selection.chosen.values():
        for index, axis in sorted(choice.weights.items()):
            add_weight(choice.inputs[index], axis, choice.node, index)
    for site in sites:
        weight = next(w for w in plan.constants.values() if site.weight_user in w.users)
        add_bias(site.bias, site.node, site.bias_index, site.activation, weight)


@dataclass(frozen=True)
class _BiasSite:
    """One int32 bias to plan: the bias constant, the node and input index that read it,
    the activation whose scale multiplies in, and the weight (with its user) whose does."""

    bias: str
    node: str
    bias_index: int
    activation: str
    weight: str
    weight_user: tuple[str, int]


def _bias_sites(plan: QuantPlan, selection: Selection, graph: ModelGraph) -> list[_BiasSite]:
    """Every bias of the selection whose activation is quantized, in graph order (node
    biases first, then MatMul + Add BiasAdds)."""
    sites = []
    for choice in selection.chosen.values():
        spec = choice.bias
        if spec is None or spec.weight not in choice.weights:
            continue
        act = choice.inputs[spec.activation]
        if act in plan.activations:
            sites.append(
                _BiasSite(
                    choice.inputs[spec.bias],
                    choice.node,
                    spec.bias,
                    act,
                    choice.inputs[spec.weight],
                    (choice.node, spec.weight),
                )
            )
    for add_name, (matmul_name, bias_tensor) in selection.fused_adds.items():
        matmul = selection.chosen[matmul_name]
        weight_index = next(iter(sorted(matmul.weights)), None)
        source = next((t for t in matmul.activations if t in plan.activations), None)
        add_node = graph.node_by_name(add_name)
        if weight_index is None or source is None or add_node is None:
            continue
        sites.append(
            _BiasSite(
                bias_tensor,
                add_name,
                list(add_node.input).index(bias_tensor),
                source,
                matmul.inputs[weight_index],
                (matmul_name, weight_index),
            )
        )
    return sites
