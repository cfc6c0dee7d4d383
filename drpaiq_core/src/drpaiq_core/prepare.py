"""Bring a model into the canonical form the planner expects.

Real exporters differ: some keep weights in Constant nodes, some leave nodes
unnamed, older ones write opset 11 or 12 where per-channel QDQ needs 13. This step
irons those out without changing what the model computes.
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper, numpy_helper

from drpaiq_core.errors import UserError
from drpaiq_core.load import default_opset

log = logging.getLogger("drpaiq")

#: DequantizeLinear's ``axis`` (per-channel) needs this opset.
PER_CHANNEL_OPSET = 13


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed (or duplicate-named) node a stable, unique name
    ``<OpType>_<index>``, so that rules and reports can name every node."""
    taken = {node.name for node in model.graph.node if node.name}
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        candidate = f"{node.op_type}_{index}"
        while candidate in taken or candidate in seen:
            candidate += "_"
        node.name = candidate
        seen.add(candidate)


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn Constant nodes holding a tensor into initializers (weights held in
    Constant nodes become quantizable like any other weight). Returns how many."""
    graph = model.graph
    keep = []
    moved = 0
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1
        ):
            attr = node.attribute[0]
            value = None
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                import numpy as np

                value = np.array(helper.get_attribute_value(attr))
                if attr.name.startswith("value_float"):
                    value = value.astype(np.float32)
                else:
                    value = value.astype(np.int64)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                moved += 1
                continue
        keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def upgrade_opset(model: onnx.ModelProto, target: int = PER_CHANNEL_OPSET) -> onnx.ModelProto:
    """Convert the model to ``target`` when its opset is older; the run says so."""
    current = default_opset(model)
    if current >= target:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        raise UserError(
            f"the model's opset {current} could not be converted to {target}, which "
            f"per-channel quantization needs ({type(exc).__name__}: {str(exc)[:200]}); "
            "re-export the model with opset 13, or pass --per-tensor"
        ) from None
    keep_legacy_resize(model, converted)
    log.info(f"opset raised from {current} to {target} (per-channel quantization needs it)")
    return converted


def keep_legacy_resize(before: onnx.ModelProto, after: onnx.ModelProto) -> int:
    """Give the Resize nodes of ``after`` that were opset-10 Resize (or Upsample) nodes
    in ``before`` the coordinates they had there; the number of nodes changed.

    Opset 10 sampled at ``x_out / scale`` and, for ``nearest``, took the floor. From
    opset 11 on the defaults are ``half_pixel`` and ``round_prefer_floor``, and the
    version converter (ONNX Runtime's pre-processing too) leaves them unset: a bilinear
    upsampling then moved by half a pixel (an export's output went 11.6 dB away from
    itself before any quantization). ``asymmetric`` and ``floor`` give the same values
    as opset 10, exactly."""
    from onnx import helper

    if default_opset(before) >= 11:
        return 0
    legacy = {
        node.output[0]
        for node in before.graph.node
        if node.op_type in ("Resize", "Upsample") and node.domain in ("", "ai.onnx") and node.output
    }
    changed = 0
    for node in after.graph.node:
        if node.op_type != "Resize" or not node.output or node.output[0] not in legacy:
            continue
        names = {attr.name for attr in node.attribute}
        mode = next(
            (helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b""
        )
        if "coordinate_transformation_mode" not in names:
            node.attribute.append(
                helper.make_attribute("coordinate_transformation_mode", "asymmetric")
            )
        if mode in (b"nearest", "nearest", b"") and "nearest_mode" not in names:
            node.attribute.append(helper.make_attribute("nearest_mode", "floor"))
        changed += 1
    return changed


def fold_batch_norms(model: onnx.ModelProto) -> int:
    """Fold inference-mode BatchNormalization into the Conv that feeds it (when the
    Conv's output feeds only that BatchNormalization and every parameter is
    constant), so the pair quantizes as one Conv with one int32 bias. Returns how
    many were folded."""
    import numpy as np

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    producer = {out: node for node in graph.node for out in node.output}
    removed: list[onnx.NodeProto] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(bn.input[0]) != 1:
            continue
        if bn.input[0] in outputs or any(name not in inits for name in bn.input[1:]):
            continue
        if conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
            continue
        if consumers.get(conv.input[1], 0) != 1:
            continue  # a shared weight cannot be rescaled for one user only
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (
            numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:]
        )
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0])
        )
        factor = gamma / np.sqrt(var + eps)
        new_weight = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
        new_bias = (bias - mean) * factor + beta
        inits[conv.input[1]].CopyFrom(
            numpy_helper.from_array(new_weight.astype(np.float32), conv.input[1])
        )
        bias_name = f"{conv.name}_folded_bias"
        graph.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), bias_name))
        if len(conv.input) > 2:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        removed.append(bn)
    for bn in removed:
        graph.node.remove(bn)
    if removed:
        log.info(f"folded {len(removed)} BatchNormalization node(s) into their Conv")
    return len(removed)


def prepare(model: onnx.ModelProto, per_channel: bool) -> onnx.ModelProto:
    """Canonical form: named nodes, constants as initializers, BatchNormalization
    folded into Conv, opset >= 13 when per-channel (>= 10 otherwise)."""
    if per_channel:
        model = upgrade_opset(model, PER_CHANNEL_OPSET)
    constants_to_initializers(model)
    fold_batch_norms(model)
    name_nodes(model)
    return model
