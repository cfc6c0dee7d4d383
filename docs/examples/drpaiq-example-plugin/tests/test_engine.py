"""The preset inside a real quantization run (needs the built-in plugins and the engine)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from drpaiq_core.plugins import ENV_BLOCK, get_plugin_host


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch):
    """The quantization pipeline, with the built-ins from their entry points and this
    plugin registered from source (whether or not it is installed)."""
    for dist in ("drpaiq-plugins-readers", "drpaiq-plugins-ops", "drpaiq-plugins-calibrators"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{dist} is not installed")
    pipeline = pytest.importorskip("drpaiq_core.pipeline")
    from drpaiq_example_plugin import plugin

    monkeypatch.setenv(ENV_BLOCK, "example")
    host = get_plugin_host()
    host.register(plugin, "example", "drpaiq-example-plugin")
    return pipeline, host


def test_quantizing_a_detector_with_the_preset_keeps_its_decode_tail_in_float(
    engine, models, tmp_path: Path
) -> None:
    from drpaiq_core.config import QuantizeConfig

    pipeline, host = engine
    source = tmp_path / "detector.onnx"
    onnx.save(models.yolo(), source)
    data = tmp_path / "calibrate.npy"
    np.save(data, np.random.default_rng(1).random((4, 3, 16, 16), dtype=np.float32))
    output = tmp_path / "detector_int8.onnx"
    config = QuantizeConfig(
        input_model=source,
        output_model=output,
        reader="numpy",
        calibrate_dataset=data,
        options={"exclude_preset": "yolov5"},
        skip_preprocess=True,  # keep the exporter's node names for the comparison below
        quiet=True,
    )
    summary = pipeline.quantize(config, host)

    tail = summary.rules["exclude_preset yolov5"]
    assert [summary.float_nodes[name][0] for name in tail] == [*models.HEAD_TAIL * 2, "Concat"]
    assert all("exclude_preset yolov5" in summary.float_nodes[name][1] for name in tail)
    assert sorted(op for op in summary.quantized.values() if op == "Conv") == ["Conv"] * 4
    # The written model runs and still decodes boxes in float: scores stay in (0, 1).
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    [boxes] = session.run(None, {"images": np.full((1, 3, 16, 16), 0.5, np.float32)})
    assert boxes.shape == (1, 640, 7)
    assert np.all((boxes[..., 4:] > 0) & (boxes[..., 4:] < 1))
