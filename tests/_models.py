"""Small real models and image folders for the reader, CLI and API tests.

A plain helper module (pytest does not load it as a conftest): tests import it with
``from tests._models import ...``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image


@pytest.fixture(autouse=True)
def restore_drpaiq_logger() -> Iterator[None]:
    """Undo what running the CLI in-process does to the "drpaiq" logger (its handler,
    level and propagation), so that later tests see the logger as they expect.
    Test modules that run the CLI import this fixture."""
    logger = logging.getLogger("drpaiq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def classifier(
    path: Path,
    *,
    layout: str = "NCHW",
    size: int = 8,
    classes: int = 4,
    batch: int | str = "N",
    height: int | str | None = None,
    width: int | str | None = None,
    input_name: str = "input",
    opset: int = 13,
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny image classifier: Conv 3->4 (3x3, pad 1) + Relu +
    GlobalAveragePool + Flatten + Gemm -> ``classes`` logits.

    :param layout: ``NCHW`` or ``NHWC`` (an NHWC model starts with a Transpose, as
        Keras exports do).
    :param batch: the batch dimension, an int or a symbolic name.
    :param height: the height (default ``size``), an int or a symbolic name.
    :param width: the width (default ``size``), an int or a symbolic name.
    :param weights: the Gemm weight ``(classes, 4)``; random when omitted.
    """
    rng = np.random.default_rng(seed)
    height = size if height is None else height
    width = size if width is None else width
    shape = [batch, 3, height, width] if layout == "NCHW" else [batch, height, width, 3]
    conv_w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (4,)).astype(np.float32)
    gemm_w = weights if weights is not None else rng.normal(0, 1, (classes, 4))
    gemm_b = np.zeros((gemm_w.shape[0],), np.float32)
    nodes = []
    first = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [input_name], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [
        helper.make_node("Conv", [first, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, gemm_w.shape[0]])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(np.asarray(gemm_w, np.float32), "gemm_w"),
            numpy_helper.from_array(gemm_b, "gemm_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def color_classifier(path: Path, *, layout: str = "NCHW", size: int = 8, order=(0, 1, 2)) -> Path:
    """A classifier whose logits are the mean R, G and B of the image (in ``order``):
    on :func:`color_dataset` images with ``order=(0, 1, 2)`` it is always right.

    GlobalAveragePool + Flatten + Gemm with a permutation matrix as weight.
    """
    shape = ["N", 3, size, size] if layout == "NCHW" else ["N", size, size, 3]
    weight = np.zeros((3, 3), np.float32)
    for row, channel in enumerate(order):
        weight[row, channel] = 1.0
    nodes = []
    first = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [
        helper.make_node("GlobalAveragePool", [first], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "color_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def images(folder: Path, count: int, *, size: int = 8, seed: int = 0, ext: str = "png") -> Path:
    """Write ``count`` random RGB images ``img_000.<ext>`` ... into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index:03d}.{ext}")
    return folder


def color_dataset(folder: Path, per_class: int = 4, *, size: int = 8) -> Path:
    """A labeled folder ``0_red``, ``1_green``, ``2_blue``: class k images have channel
    k brighter than the others (with noise), so :func:`color_classifier` gets them right."""
    rng = np.random.default_rng(1)
    for label, name in enumerate(("0_red", "1_green", "2_blue")):
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            pixels[:, :, label] += 150
            Image.fromarray(pixels).save(target / f"{name}_{index}.png")
    return folder


def corrupt_image(path: Path) -> Path:
    """A file with an image extension whose content is not an image."""
    path.write_bytes(b"this is not a PNG file at all")
    return path


def decompression_bomb(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels: Pillow's bomb
    protection refuses it when the file is opened, without decoding anything."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    data += chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def activation_model(path: Path, activation: str, *, size: int = 8) -> Path:
    """Conv -> activation -> GlobalAveragePool -> Flatten -> Gemm.

    ``activation`` is ``"mish"`` (Exp, Add, Log, Tanh, Mul: YOLOv4's Mish as exported
    without Softplus) or ``"relu6"`` (Clip 0..6, as MobileNetV2 exports ReLU6).
    """
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 1, (2, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="Conv_0")
    ]
    if activation == "mish":
        inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
        nodes += [
            helper.make_node("Exp", ["conv"], ["exp"], name="Exp_1"),
            helper.make_node("Add", ["exp", "one"], ["add"], name="Add_2"),
            helper.make_node("Log", ["add"], ["log"], name="Log_3"),
            helper.make_node("Tanh", ["log"], ["tanh"], name="Tanh_4"),
            helper.make_node("Mul", ["conv", "tanh"], ["act"], name="Mul_5"),
        ]
    else:
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        ]
        nodes.append(helper.make_node("Clip", ["conv", "lo", "hi"], ["act"], name="Clip_1"))
    nodes += [
        helper.make_node("GlobalAveragePool", ["act"], ["gap"], name="GlobalAveragePool_6"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="Flatten_7"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["out"], transB=1, name="Gemm_8"),
    ]
    graph = helper.make_graph(
        nodes,
        activation,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


#: A calibration reader as users of the reference tool write them (after ONNX
#: Runtime's example): it subclasses CalibrationDataReader, opens a session on the
#: model for the input size and name, and preprocesses every image up front.
REFERENCE_STYLE_READER = """\
import os

import numpy as np
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image


def _load(folder, height, width, mean, std, layout, size_limit):
    names = sorted(os.listdir(folder))
    if size_limit > 0:
        names = names[:size_limit]
    batch = []
    for name in names:
        image = Image.open(os.path.join(folder, name)).convert("RGB").resize((width, height))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.array(mean, np.float32)) / np.array(std, np.float32)
        if layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        batch.append(pixels[None].astype(np.float32))
    return batch


class {name}(CalibrationDataReader):
    def __init__(self, calibration_image_folder, norm_mean, norm_std, augmented_model_path=None):
        self.image_folder = calibration_image_folder
        self.augmented_model_path = augmented_model_path
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self.preprocess_flag = True
        self.enum_data_dicts = iter([])
        self.datasize = 0
        self.size_limit = 0

    def get_next(self):
        if self.preprocess_flag:
            self.preprocess_flag = False
            session = onnxruntime.InferenceSession(
                self.augmented_model_path, providers=["CPUExecutionProvider"]
            )
            shape = session.get_inputs()[0].shape
            height, width = (shape[2], shape[3]) if "{layout}" == "NCHW" else (shape[1], shape[2])
            data = _load(self.image_folder, height, width, self.norm_mean, self.norm_std,
                         "{layout}", self.size_limit)
            input_name = session.get_inputs()[0].name
            self.datasize = len(data)
            self.enum_data_dicts = iter([{{input_name: item}} for item in data])
        return next(self.enum_data_dicts, None)
"""


def reference_reader_file(path: Path, layout: str = "NCHW") -> Path:
    """Write a reference-style reader file defining ``NCHWDataReader`` or ``NHWCDataReader``."""
    name = "NCHWDataReader" if layout == "NCHW" else "NHWCDataReader"
    path.write_text(REFERENCE_STYLE_READER.format(name=name, layout=layout), encoding="utf-8")
    return path
