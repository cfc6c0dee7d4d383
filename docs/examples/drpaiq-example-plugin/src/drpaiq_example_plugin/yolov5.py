"""The ``yolov5`` exclusion preset: leave YOLOv5's box-decoding tail in float.

Each detection head of YOLOv5 ends with a 1x1 Conv. Its output is reshaped and
transposed, squashed by a Sigmoid, then decoded into boxes: Mul/Add (or Sub) against
the grid and the stride, Mul/Pow against the anchors, a Concat of xy, wh and the
scores, and finally a Concat of all heads. One tensor there holds pixel coordinates
(up to the image size) next to probabilities in [0, 1]; an INT8 scale wide enough for
the coordinates leaves the scores a handful of levels, which is why the reference
tool's manual tells users to exclude these nodes by name (``Reshape_261,
Transpose_262, Sigmoid_263, ...``). The names change with every export; the
structure does not, so the preset finds the nodes by structure:

    the tail = every node that a Conv feeds (directly or through other nodes) and
    that feeds no Conv, i.e. everything after the last Conv of its branch.

Users turn the preset on with the advanced option ``exclude_preset yolov5``
(several presets: ``exclude_preset yolov5,other``; presets this plugin does not know
are left to the plugins that do). The module imports only drpaiq's plugin API.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import ExclusionMatcher, ExclusionRules, GraphView, MatchReport

if TYPE_CHECKING:
    import onnx

#: The advanced option that selects presets, and this plugin's preset.
OPTION = "exclude_preset"
PRESET = "yolov5"

#: Op types YOLOv5's decode tail is made of (static and dynamic-shape exports, with or
#: without an NMS step). Any other op after the last Conv means the model is not a
#: YOLOv5 detector, and excluding "everything after the last Conv" would be wrong
#: (a classifier's Gemm, for instance).
DECODE_OPS = frozenset(
    {
        "Add", "ArgMax", "Cast", "Concat", "Constant", "ConstantOfShape", "Div", "Equal",
        "Exp", "Expand", "Flatten", "Gather", "GatherElements", "Greater", "Identity",
        "Mul", "NonMaxSuppression", "NonZero", "Pow", "Range", "ReduceMax", "Reshape",
        "Shape", "Sigmoid", "Slice", "Split", "Squeeze", "Sub", "Tile", "TopK",
        "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip


def _is_conv(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and node.domain in ("", "ai.onnx")


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name; an unnamed node is ``<OpType>_<index>``, the name drpaiq gives it
    before exclusion matchers run."""
    return node.name or f"{node.op_type}_{index}"


def decode_tail(nodes: Sequence[onnx.NodeProto]) -> tuple[list[int], list[int]]:
    """Find the nodes after the last Conv of each branch.

    :param nodes: the graph's nodes in topological order.
    :returns: the indices of the tail nodes, and of the Convs that feed the tail (the
        last Conv of each head), both in graph order.
    """
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = i
        for name in node.input:
            if name:
                consumers[name].append(i)

    # after_conv: some Conv lies upstream. Topological order means producers come first.
    after_conv = [False] * len(nodes)
    for i, node in enumerate(nodes):
        upstream = [producer[name] for name in node.input if name in producer]
        after_conv[i] = any(_is_conv(nodes[j]) or after_conv[j] for j in upstream)

    # feeds_conv: some Conv lies downstream; walk backwards so consumers come first.
    feeds_conv = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        downstream = [j for name in nodes[i].output for j in consumers.get(name, ())]
        feeds_conv[i] = any(_is_conv(nodes[j]) or feeds_conv[j] for j in downstream)

    tail = [
        i
        for i, node in enumerate(nodes)
        if after_conv[i] and not feeds_conv[i] and not _is_conv(node)
    ]
    in_tail = set(tail)
    heads = [
        i
        for i, node in enumerate(nodes)
        if _is_conv(node)
        and not feeds_conv[i]
        and any(j in in_tail for name in node.output for j in consumers.get(name, ()))
    ]
    return tail, heads


def requested_presets(rules: ExclusionRules) -> list[str]:
    """The presets named by the ``exclude_preset`` option, lower-cased."""
    value = rules.options.get(OPTION, "")
    return [part.strip().lower() for part in value.split(",") if part.strip()]


class YoloV5PostprocessMatcher(ExclusionMatcher):
    """Leaves YOLOv5's box-decoding tail in float when the user gives
    ``exclude_preset yolov5``.

    The tail is every node after the last Conv of its branch. A model whose tail holds
    an op that YOLOv5's decoding never uses (see :data:`DECODE_OPS`), or no Sigmoid at
    all, is refused with a :class:`~drpaiq_core.errors.UserError`: the preset would
    otherwise silently leave the wrong nodes in float.
    """

    PLUGIN_NAME = "yolov5_postprocess"
    DESCRIPTION = "leave YOLOv5's decode tail in float (advanced option: exclude_preset yolov5)"
    OPTIONS = {OPTION: "exclusion presets, comma separated; yolov5: YOLOv5's box-decoding tail"}

    def match(self, graph: GraphView, rules: ExclusionRules) -> list[MatchReport]:
        """One report for the ``yolov5`` preset when the user asked for it, else none."""
        if PRESET not in requested_presets(rules):
            return []
        rule = f"{OPTION} {PRESET}"
        nodes = list(graph.nodes)
        tail, _heads = decode_tail(nodes)
        if not tail:
            raise UserError(
                f"{rule}: no node follows the model's last Conv, so there is no YOLOv5 "
                "decode tail to leave in float; drop the option for this model"
            )
        foreign = [i for i in tail if nodes[i].op_type not in DECODE_OPS]
        if foreign:
            shown = ", ".join(
                f"{nodes[i].op_type} {node_label(nodes[i], i)!r}" for i in foreign[:3]
            )
            raise UserError(
                f"{rule}: after the last Conv this model has {shown}, which YOLOv5's decode "
                "tail never contains; it does not look like a YOLOv5 export, so drop the "
                "option and exclude nodes by name with --node_to_exclude"
            )
        if not any(nodes[i].op_type == "Sigmoid" for i in tail):
            raise UserError(
                f"{rule}: no Sigmoid follows the model's last Conv, but YOLOv5's decode tail "
                "starts with one; drop the option and exclude nodes by name with "
                "--node_to_exclude"
            )
        # The rule is reported as the user wrote it; the summary counts its nodes.
        return [MatchReport(rule=rule, nodes=[node_label(nodes[i], i) for i in tail])]
