"""The ``yolov5_postprocess`` matcher on real ONNX graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from drpaiq_core.errors import UserError
from drpaiq_core.graph import ModelGraph
from drpaiq_core.plugin_api import ExclusionRules
from drpaiq_example_plugin.yolov5 import YoloV5PostprocessMatcher, decode_tail


def preset(value: str) -> ExclusionRules:
    return ExclusionRules(options={"exclude_preset": value})


def test_the_test_detector_runs_and_has_the_yolov5_output_shape(models) -> None:
    model = models.yolo()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    [boxes] = session.run(None, {"images": images})
    assert boxes.shape == (1, 640, 7)
    assert np.all((boxes[..., 4:] > 0) & (boxes[..., 4:] < 1))  # scores went through Sigmoid


def test_without_the_option_the_matcher_reports_nothing(models) -> None:
    graph = ModelGraph(models.yolo())
    assert YoloV5PostprocessMatcher().match(graph, ExclusionRules()) == []
    assert YoloV5PostprocessMatcher().match(graph, preset("yolov8")) == []


@pytest.mark.parametrize("value", ["yolov5", "YOLOv5", "other, yolov5"])
def test_the_preset_leaves_exactly_the_decode_tail_of_every_head_in_float(models, value) -> None:
    model = models.yolo()
    [report] = YoloV5PostprocessMatcher().match(ModelGraph(model), preset(value))
    assert report.rule == "exclude_preset yolov5"
    excluded = [node for node in model.graph.node if node.name in report.nodes]
    assert [node.name for node in excluded] == report.nodes  # graph order, each once
    assert [node.op_type for node in excluded] == [*models.HEAD_TAIL * 2, "Concat"]
    # The backbone's SiLU (Sigmoid, Mul) and every Conv stay quantized.
    kept = [node for node in model.graph.node if node.name not in report.nodes]
    assert [node.op_type for node in kept] == [
        "Conv", "Sigmoid", "Mul", "Conv", "MaxPool", "Conv", "Sigmoid", "Mul", "Conv"
    ]  # fmt: skip


def test_the_tail_starts_after_the_last_conv_of_each_head(models) -> None:
    nodes = list(models.yolo().graph.node)
    tail, heads = decode_tail(nodes)
    assert [nodes[i].op_type for i in heads] == ["Conv", "Conv"]
    for head in heads:
        consumers = [n for n in nodes if nodes[head].output[0] in n.input]
        assert [n.op_type for n in consumers] == ["Reshape"]
    assert len(tail) == 2 * len(models.HEAD_TAIL) + 1


def test_unnamed_nodes_are_reported_as_optype_and_index(models) -> None:
    model = models.yolo(named=False)
    [report] = YoloV5PostprocessMatcher().match(ModelGraph(model), preset("yolov5"))
    assert report.nodes[0] == f"Reshape_{[n.op_type for n in model.graph.node].index('Reshape')}"
    assert report.nodes[-1] == f"Concat_{len(model.graph.node) - 1}"


def test_a_classifier_is_refused_naming_the_op_that_yolov5_never_has(models) -> None:
    with pytest.raises(UserError) as raised:
        YoloV5PostprocessMatcher().match(ModelGraph(models.classifier()), preset("yolov5"))
    message = str(raised.value)
    assert message.startswith("exclude_preset yolov5: after the last Conv")
    assert "Gemm 'Gemm_" in message
    assert "--node_to_exclude" in message
    assert "\n" not in message


def test_a_tail_without_sigmoid_is_refused(models) -> None:
    with pytest.raises(UserError, match="no Sigmoid follows"):
        YoloV5PostprocessMatcher().match(
            ModelGraph(models.conv_then(["Identity"])), preset("yolov5")
        )


def test_a_model_ending_in_a_conv_is_refused(models) -> None:
    with pytest.raises(UserError, match="no node follows the model's last Conv"):
        YoloV5PostprocessMatcher().match(ModelGraph(models.conv_then([])), preset("yolov5"))
