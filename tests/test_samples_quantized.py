"""The shipped samples, quantized once: the ties hold in the written files, the files
are valid and small, and the INT8 models keep their accuracy on a test subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests._engine import run

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CALIBRATE = SAMPLES / "data" / "calibrate"

pytest.importorskip("drpaiq_plugins_readers.images")
pytest.importorskip("drpaiq_plugins_ops.quantizers")
pytest.importorskip("drpaiq_plugins_calibrators.minmax")

SAMPLE_ARGS = {
    "modA_resnet_nchw.onnx": ("nchw_image", ("0.2860",) * 3, ("0.3530",) * 3),
    "modB_resnet_nhwc.onnx": ("nhwc_image", ("0",) * 3, ("1",) * 3),
}


@pytest.fixture(scope="module", params=sorted(SAMPLE_ARGS))
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(fp32 path, int8 path, summary dict) of one sample quantized with MinMax."""
    name = request.param
    model = SAMPLES / name
    if not model.exists() or not CALIBRATE.is_dir():
        pytest.skip(f"sample {name} is not in this checkout")
    from drpaiq_core.cli import main

    reader, mean, std = SAMPLE_ARGS[name]
    out_dir = tmp_path_factory.mktemp(name.split(".")[0])
    out = out_dir / "int8.onnx"
    summary = out_dir / "summary.json"
    argv = [
        "--quiet",
        "--reader",
        reader,
        "quantize",
        str(model),
        "-o",
        str(out),
        "--calibrate_dataset",
        str(CALIBRATE),
        "--norm_mean",
        *mean,
        "--norm_std",
        *std,
        "--summary-json",
        str(summary),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return model, out, json.loads(summary.read_text())


class _Graph:
    def __init__(self, path: Path) -> None:
        self.model = onnx.load(str(path))
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.model.graph.initializer}
        self.producer = {o: n for n in self.model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def input_params(self, node: onnx.NodeProto, index: int) -> tuple[float, int] | None:
        """(scale, zero point) of the DequantizeLinear feeding input ``index``."""
        dq = self.producer.get(node.input[index])
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        return float(self.inits[dq.input[1]]), int(self.inits[dq.input[2]])

    def output_params(self, node: onnx.NodeProto) -> tuple[float, int] | None:
        """(scale, zero point) of the QuantizeLinear reading the node's output."""
        q = next(
            (c for c in self.consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"),
            None,
        )
        if q is None:
            return None
        return float(self.inits[q.input[1]]), int(self.inits[q.input[2]])

    def nodes(self, op: str) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if n.op_type == op]


def test_written_model_is_valid_small_and_runs(quantized) -> None:
    fp32, out, summary = quantized
    onnx.checker.check_model(str(out), full_check=True)
    assert out.stat().st_size <= 0.3 * fp32.stat().st_size
    assert summary["size_ratio"] <= 0.3
    model = onnx.load(str(out))
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {model.graph.input[0].name: np.zeros(shape, np.float32)}
    (logits,) = run(out, feed)
    assert logits.shape == (shape[0], 10)


def test_concat_inputs_share_the_outputs_parameters(quantized) -> None:
    graph = _Graph(quantized[1])
    concats = graph.nodes("Concat")
    if "modB" in quantized[0].name:
        assert concats, "modB must have a Concat"
    for node in concats:
        out = graph.output_params(node)
        assert out is not None
        for index in range(len(node.input)):
            assert graph.input_params(node, index) == out


def test_add_inputs_share_one_scale(quantized) -> None:
    graph = _Graph(quantized[1])
    checked = 0
    for node in graph.nodes("Add"):
        params = [graph.input_params(node, i) for i in range(2)]
        if None in params:
            continue  # a BiasAdd: the int32 bias is checked below
        assert params[0][0] == pytest.approx(params[1][0], rel=1e-7)
        checked += 1
    assert checked >= 1


def test_pass_through_ops_keep_their_inputs_parameters(quantized) -> None:
    graph = _Graph(quantized[1])
    checked = 0
    for op in ("MaxPool", "Transpose", "Reshape", "Flatten"):
        for node in graph.nodes(op):
            before, after = graph.input_params(node, 0), graph.output_params(node)
            assert before is not None and before == after, node.name
            checked += 1
    assert checked >= 1


def test_biases_are_int32_with_input_times_weight_scale(quantized) -> None:
    graph = _Graph(quantized[1])
    checked = 0
    for node in graph.model.graph.node:
        if node.op_type == "Add" and "modB" in quantized[0].name:
            # The FC BiasAdd: MatMul output + DequantizeLinear(int32 bias).
            matmul = graph.producer.get(node.input[0])
            if matmul is None or matmul.op_type != "MatMul":
                continue
            bias_dq = graph.producer[node.input[1]]
            weight_dq = graph.producer[matmul.input[1]]
            act_scale = graph.input_params(matmul, 0)[0]
        elif node.op_type in ("Conv", "Gemm", "BatchNormalization") and len(node.input) > 2:
            bias_dq = graph.producer[node.input[2]]
            weight_dq = graph.producer[node.input[1]]
            act_scale = graph.input_params(node, 0)[0]
        else:
            continue
        assert graph.inits[bias_dq.input[0]].dtype == np.int32
        assert not graph.inits[bias_dq.input[2]].any()
        assert graph.inits[weight_dq.input[0]].dtype == np.int8
        expected = (np.float32(act_scale) * graph.inits[weight_dq.input[1]]).astype(np.float32)
        np.testing.assert_allclose(graph.inits[bias_dq.input[1]], expected, rtol=1e-6)
        checked += 1
    assert checked >= 1
    if "modB" in quantized[0].name:
        # The dense layers are MatMul + Add(bias) in the FP32 file; pre-processing may
        # fuse each pair into a Gemm. Either way the bias must be an int32 input.
        bias_adds = [
            n
            for n in graph.nodes("Add")
            if graph.producer.get(n.input[0]) is not None
            and graph.producer[n.input[0]].op_type == "MatMul"
        ]
        gemms = [n for n in graph.nodes("Gemm") if len(n.input) > 2]
        assert len(bias_adds) + len(gemms) >= 2, "both dense layers must carry int32 biases"


def test_int8_keeps_accuracy_on_a_balanced_test_subset(quantized) -> None:
    from drpaiq_core.evaluate import evaluate
    from drpaiq_core.plugins import get_plugin_host

    fp32, out, _ = quantized
    reader, mean, std = SAMPLE_ARGS[fp32.name]
    result = evaluate(
        [fp32, out],
        dataset=SAMPLES / "data" / "test",
        host=get_plugin_host(),
        reader=reader,
        norm_mean=tuple(float(v) for v in mean),
        norm_std=tuple(float(v) for v in std),
        size_limit=600,
        quiet=True,
    )
    base, int8 = (score.percent(score.top1) for score in result.scores)
    assert result.images == 600
    assert base >= 80.0, "the FP32 sample itself must be a trained model"
    assert base - int8 <= 1.5, f"INT8 top-1 {int8:.2f} vs FP32 {base:.2f}"
