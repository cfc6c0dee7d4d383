"""The reference tool's Python API (drpaiq_core.compat), run as users' scripts run it.

The listings below are written as in the reference manual; each test adds only the
import line and runs the listing unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from drpaiq_core.compat import (
    NCHWDataReader,
    NHWCDataReader,
    QuantType,
    build_config,
    do_preprocess,
    quantize_interface,
)
from drpaiq_core.errors import UserError

from drpaiq_core import compat
from tests._models import (
    activation_model,
    classifier,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

IMPORTS = (
    "from drpaiq_core.compat import quantize_interface, do_preprocess, CalibrationMethod, "
    "QuantType, NCHWDataReader, NHWCDataReader\n"
)

LISTING_NCHW = """
calibration_image_folder = "./calibrate_images"
norm_mean = [0.4914, 0.4822, 0.4465]
norm_std = [0.2023, 0.1994, 0.2010]
input_model_path = "modA_resnet18.onnx"
preprocessed_model_output = "modA_resnet18_preprocessed.onnx"
output_model_path = "modA_resnet18_q.onnx"

nchw = NCHWDataReader(calibration_image_folder, norm_mean, norm_std, input_model_path)
do_preprocess(input_model_path, preprocessed_model_output, do_symbolic_shape_inference=True,
              do_onnx_shape_inference=True, do_optimization=True, skip_preprocess=False,
              verbose=0, preprocess_mode="default")
quantize_interface(preprocessed_model_output, output_model_path, datareader=nchw,
                   calibrate_method=CalibrationMethod.Entropy,
                   operate_to_exclude=None, node_to_exclude=None)
"""

LISTING_NHWC = """
nhwc = NHWCDataReader("./calibrate_images", [0, 0, 0], [1, 1, 1], "modB_resnet18.onnx")
nhwc.size_limit = 3
do_preprocess("modB_resnet18.onnx", "modB_pre.onnx")
quantize_interface("modB_pre.onnx", "modB_resnet18_q.onnx", nhwc, calibrate_method="MinMax",
                   activation_type=QuantType.QInt8, summary_json="summary.json")
"""

LISTING_EXCLUSION = """
reader = NCHWDataReader("./calibrate_images", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], "yolov4.onnx")
do_preprocess("yolov4.onnx", "yolov4_pre.onnx", skip_preprocess=True)
quantize_interface("yolov4_pre.onnx", "yolov4_q.onnx", datareader=reader,
                   calibrate_method=CalibrationMethod.MinMax,
                   operate_to_exclude="Softplus,Tanh", node_to_exclude="Log_3",
                   exclude_act_func_dir="rules.csv", summary_json="summary.json")
"""

LISTING_OWN_READER = """
import numpy as np
from PIL import Image


class LetterboxReader(NCHWDataReader):
    # Pads instead of stretching, as the manual suggests for a reader of one's own.
    def preprocess_func(self, images_folder, height, width, size_limit=0):
        import os
        names = sorted(os.listdir(images_folder))[: size_limit or None]
        out = []
        for name in names:
            image = Image.open(os.path.join(images_folder, name)).convert("RGB")
            image.thumbnail((width, height))
            canvas = Image.new("RGB", (width, height))
            canvas.paste(image)
            x = (np.asarray(canvas, np.float32) / 255 - 0.5) / 0.25
            out.append(x.transpose(2, 0, 1)[None])
        return out


reader = LetterboxReader("./calibrate_images", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25],
                         "modA_resnet18.onnx")
quantize_interface("modA_resnet18.onnx", "own_q.onnx", reader,
                   calibrate_method=CalibrationMethod.Percentile, percentile_value=99.9)
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    classifier(tmp_path / "modA_resnet18.onnx", size=8)
    classifier(tmp_path / "modB_resnet18.onnx", size=8, layout="NHWC", input_name="input_1")
    activation_model(tmp_path / "yolov4.onnx", "mish")
    images(tmp_path / "calibrate_images", 5, size=12)
    (tmp_path / "rules.csv").write_text("Exp, Add, Log, Tanh, ^Mul\n", encoding="utf-8")
    return tmp_path


def run_listing(listing: str) -> dict:
    namespace: dict = {}
    exec(compile(IMPORTS + textwrap.dedent(listing), "listing.py", "exec"), namespace)
    return namespace


def output_of(path, shape, data=None):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.ones(shape, np.float32) if data is None else data
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def quantize_linear_count(path) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


def test_listing_nchw_with_preprocessing(workdir):
    run_listing(LISTING_NCHW)
    assert onnx.load(str(workdir / "modA_resnet18_preprocessed.onnx")).graph.node
    assert quantize_linear_count(workdir / "modA_resnet18_q.onnx") > 0
    assert output_of(workdir / "modA_resnet18_q.onnx", (1, 3, 8, 8)).shape == (1, 4)


def test_listing_nhwc_with_size_limit(workdir):
    run_listing(LISTING_NHWC)
    assert json.loads((workdir / "summary.json").read_text())["samples"] == 3
    # On a calibration image the INT8 model answers like the FP32 one (MinMax).
    image = NHWCDataReader("calibrate_images", [0, 0, 0], [1, 1, 1], "modB_resnet18.onnx")
    feed = image.get_next()["input_1"]
    fp32 = output_of(workdir / "modB_resnet18.onnx", None, feed)
    int8 = output_of(workdir / "modB_resnet18_q.onnx", None, feed)
    np.testing.assert_allclose(int8, fp32, atol=0.05 * np.abs(fp32).max())


def test_listing_with_exclusions(workdir):
    run_listing(LISTING_EXCLUSION)
    summary = json.loads((workdir / "summary.json").read_text())
    floats = summary["float_nodes"]
    assert {"Exp_1", "Add_2", "Log_3", "Tanh_4"} <= set(floats)
    assert "Mul_5" not in floats  # ^Mul: quantized although part of the pattern
    assert (workdir / "yolov4_pre.onnx").read_bytes()


def test_listing_with_a_reader_of_ones_own(workdir):
    namespace = run_listing(LISTING_OWN_READER)
    assert namespace["reader"].get_next() is None  # consumed by the run
    assert quantize_linear_count(workdir / "own_q.onnx") > 0


def test_readers_resolve_lazily_through_the_plugin_host():
    assert NCHWDataReader.__name__ == "NCHWDataReader"
    assert compat.NHWCDataReader.__name__ == "NHWCDataReader"
    assert {"NCHWDataReader", "NHWCDataReader"} <= set(dir(compat))
    with pytest.raises(AttributeError):
        compat.NoSuchReader  # noqa: B018
    code = (
        "import sys\n"
        "import drpaiq_core.compat as c\n"
        "assert 'onnxruntime' not in sys.modules\n"
        "c.NCHWDataReader\n"
        "assert 'onnxruntime' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_config_maps_the_reference_arguments():
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantType as OrtType

    config = build_config(
        "m.onnx",
        "q.onnx",
        object(),
        OrtMethod.Entropy,
        operate_to_exclude=["Softplus,Tanh", "exp"],
        node_to_exclude="Conv_1, Add_3",
        activation_zeropoint=False,
        activation_type=OrtType.QUInt8,
        percentile_value=99.99,
        num_bins=4096,
        entropy_debug="dbg",
        per_channel=True,
    )
    assert config.calibrate_method == "entropy"
    assert config.op_types_to_exclude == ("Softplus", "Tanh", "exp")
    assert config.nodes_to_exclude == ("Conv_1", "Add_3")
    assert config.activation_symmetric is True
    assert config.activation_type == "uint8"
    assert config.options["percentile_value"] == "99.99"
    assert config.options["num_bins"] == "4096"
    assert str(config.debug_dir) == "dbg"
    assert config.skip_preprocess is True  # pre-processing is do_preprocess's job
    assert build_config("m", "q", object(), "Percentile").calibrate_method == "percentile"
    assert build_config("m", "q", object(), QuantType.QInt8.name).calibrate_method == "qint8"


def test_unknown_keyword_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown option 'reduce_range'") as err:
        build_config("m.onnx", "q.onnx", object(), reduce_range=True)
    assert "exclude_act_func_dir" in str(err.value) and "calibrate_dataset" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_bins": "many"}, "num_bins must be a whole number"),
        ({"activation_type": "int4"}, "QInt8 or QUInt8"),
        ({"activation_zeropoint": "maybe"}, "True or False"),
        ({"percentile_value": 50}, "above 50"),
        ({"weight_type": QuantType.QUInt8}, "weight_type must be QInt8"),
    ],
)
def test_bad_advanced_values(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_config("m.onnx", "q.onnx", object(), **kwargs)


def test_quantize_interface_needs_data(workdir):
    with pytest.raises(UserError, match="needs calibration data"):
        quantize_interface("modA_resnet18.onnx", "q.onnx")


def test_quantize_interface_with_a_folder_instead_of_a_reader(workdir):
    quantize_interface(
        "modA_resnet18.onnx",
        "q.onnx",
        calibrate_dataset="calibrate_images",
        norm_mean=[0.5] * 3,
        norm_std=[0.25] * 3,
        quiet=True,
    )
    assert quantize_linear_count(workdir / "q.onnx") > 0


def test_ranges_through_the_advanced_options(workdir):
    """save_ranges / load_ranges work as keyword arguments of the reference API, as
    their flags do: the second run needs no calibration data and writes the same model."""
    settings = {"norm_mean": [0.5] * 3, "norm_std": [0.25] * 3, "quiet": True}
    quantize_interface(
        "modA_resnet18.onnx",
        "first.onnx",
        calibrate_dataset="calibrate_images",
        save_ranges="ranges.json",
        **settings,
    )
    assert json.loads((workdir / "ranges.json").read_text())["ranges"]
    quantize_interface(
        "modA_resnet18.onnx",
        "second.onnx",
        calibrate_dataset="no such folder",
        load_ranges="ranges.json",
        **settings,
    )
    assert (workdir / "second.onnx").read_bytes() == (workdir / "first.onnx").read_bytes()


def test_a_class_instead_of_an_instance(workdir):
    with pytest.raises(UserError, match="is a class; pass an instance"):
        quantize_interface("modA_resnet18.onnx", "q.onnx", NCHWDataReader)


def test_do_preprocess_skip_copies_the_model(workdir):
    out = do_preprocess("modA_resnet18.onnx", "copy.onnx", skip_preprocess=True)
    assert onnx.load(str(out)).graph == onnx.load("modA_resnet18.onnx").graph


def test_do_preprocess_external_data_arguments(workdir):
    """quant_pre_process's external-data keywords: the weights go into one file beside
    the model (named by external_data_location, or <model>.data), the model runs the
    same, and a location with a folder in it is refused."""
    classifier(workdir / "wide.onnx", classes=300)  # weights over the 1 KiB threshold
    inline = do_preprocess("wide.onnx", "inline.onnx")
    out = do_preprocess(
        "wide.onnx",
        "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        external_data_location="ext_weights.bin",
    )
    shell = onnx.load(str(out), load_external_data=False)
    locations = {
        e.value for t in shell.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"ext_weights.bin"}
    assert (workdir / "ext_weights.bin").stat().st_size > 1200
    assert out.stat().st_size < inline.stat().st_size
    feed = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feed})[0]

    np.testing.assert_array_equal(run(out), run(inline))
    do_preprocess("wide.onnx", "default.onnx", skip_preprocess=True, save_as_external_data=True)
    assert (workdir / "default.onnx.data").is_file()
    with pytest.raises(UserError, match="is a path; give a file name"):
        do_preprocess(
            "wide.onnx", "p.onnx", save_as_external_data=True, external_data_location="sub/w.bin"
        )
    assert not (workdir / "p.onnx").exists()


def test_do_preprocess_refuses_unknown_arguments_and_modes(workdir):
    with pytest.raises(UserError, match="known extra arguments: auto_merge"):
        do_preprocess("modA_resnet18.onnx", "p.onnx", fancy=True)
    with pytest.raises(UserError, match="unknown --preprocess_mode 'qat'"):
        do_preprocess("modA_resnet18.onnx", "p.onnx", preprocess_mode="qat")
