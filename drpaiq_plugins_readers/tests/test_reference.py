"""NCHWDataReader/NHWCDataReader: the reference tool's get_next readers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from drpaiq_core.errors import UserError
from drpaiq_plugins_readers.reference import NCHWDataReader, NHWCDataReader
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image


def identity_model(path, shape):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return str(path)


def feeds(reader):
    out = []
    while (item := reader.get_next()) is not None:
        out.append(item)
    return out


@pytest.fixture
def folder(tmp_path, write_image):
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.png", (i * 60, 0, 255), size=(12, 6))
    return tmp_path / "imgs"


def test_nchw_get_next_protocol(tmp_path, folder):
    model = identity_model(tmp_path / "m.onnx", [1, 3, 4, 5])
    reader = NCHWDataReader(str(folder), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], model)
    assert isinstance(reader, CalibrationDataReader)
    items = feeds(reader)
    assert len(items) == 4 == len(reader) == reader.datasize
    assert set(items[0]) == {"x"}
    assert items[0]["x"].shape == (1, 3, 4, 5) and items[0]["x"].dtype == np.float32
    np.testing.assert_allclose(
        items[3]["x"][0, :, 1, 1], [(180 / 255 - 0.5) / 0.5, -1.0, 1.0], atol=1e-5
    )
    assert reader.get_next() is None


def test_nhwc_size_limit_and_rewind(tmp_path, folder):
    model = identity_model(tmp_path / "m.onnx", ["N", 4, 5, 3])
    reader = NHWCDataReader(folder, (0, 0, 0), (1, 1, 1), model)
    reader.size_limit = 2
    first = feeds(reader)
    assert [f["x"].shape for f in first] == [(1, 4, 5, 3)] * 2
    reader.rewind()
    second = feeds(reader)
    np.testing.assert_array_equal(first[1]["x"], second[1]["x"])


def test_preprocess_func_can_be_overridden(tmp_path, folder):
    """A user's subclass that pads instead of stretching, as the manual suggests."""

    class PaddingReader(NCHWDataReader):
        def preprocess_func(self, images_folder, height, width, size_limit=0):
            batch = []
            for path in sorted(folder.iterdir()):
                image = Image.open(path).convert("RGB")
                image.thumbnail((width, height))
                canvas = Image.new("RGB", (width, height))
                canvas.paste(image)
                array = np.asarray(canvas, np.float32).transpose(2, 0, 1) / 255.0
                batch.append(array)  # no batch axis: the reader adds it
            return batch

    model = identity_model(tmp_path / "m.onnx", [1, 3, 6, 6])
    items = feeds(PaddingReader(folder, [0, 0, 0], [1, 1, 1], model))
    assert len(items) == 4 and items[0]["x"].shape == (1, 3, 6, 6)
    assert items[0]["x"][0, 2, 5, 5] == 0.0  # the padding


def test_norm_values_are_checked(folder, tmp_path):
    with pytest.raises(UserError, match="norm_mean must be 3 numbers"):
        NCHWDataReader(folder, [0.1, 0.2], [1, 1, 1], "m.onnx")
    with pytest.raises(UserError, match="norm_std must be 3 numbers"):
        NCHWDataReader(folder, [0, 0, 0], "abc", "m.onnx")


def test_missing_folder_and_dynamic_size(tmp_path, folder):
    with pytest.raises(UserError, match="does not exist"):
        NCHWDataReader(tmp_path / "nope", [0, 0, 0], [1, 1, 1], "m.onnx")
    model = identity_model(tmp_path / "m.onnx", [1, 3, "h", "w"])
    reader = NCHWDataReader(folder, [0, 0, 0], [1, 1, 1], model)
    with pytest.raises(UserError, match="dynamic height or width"):
        reader.get_next()
    reader = NCHWDataReader(folder, [0, 0, 0], [1, 1, 1], model)
    reader.input_shape = (1, 3, 7, 9)
    assert reader.get_next()["x"].shape == (1, 3, 7, 9)
