"""Step 1 of a run: load and validate the FP32 model the user gave.

Every problem with the file becomes one :class:`UserError` line. External data is
read only from inside the model's own folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from drpaiq_core.errors import UserError, first_line
from drpaiq_core.plugin_api import InputSpec

if TYPE_CHECKING:
    import onnx

#: The oldest opset we accept (QuantizeLinear/DequantizeLinear exist from 10 on).
MIN_OPSET = 10


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations outside ``base_dir`` (absolute paths, ``..``,
    symlinks that lead out)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    root = base_dir.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not location or os.path.isabs(location):
            raise UserError(
                f"tensor {tensor.name!r} keeps its data at {location!r}, an absolute or empty "
                "path; external data must sit in the model's own folder"
            )
        target = (root / location).resolve()
        if root != target and root not in target.parents:
            raise UserError(
                f"tensor {tensor.name!r} keeps its data at {location!r}, outside the model's "
                f"folder {root}; refusing to read it"
            )
        if not target.is_file():
            raise UserError(
                f"tensor {tensor.name!r}: external data file {target} is missing; keep it "
                "beside the model"
            )


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) and check that it is one we can
    quantize: it parses, it has inputs, its opset is at least :data:`MIN_OPSET`."""
    import onnx

    model_path = Path(path)
    if not model_path.exists():
        raise UserError(f"model {model_path} does not exist; check the path")
    if not model_path.is_file():
        raise UserError(f"model {model_path} is not a file; give the path of a .onnx file")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise UserError(
            f"model {model_path} is not a readable ONNX file ({type(exc).__name__}); "
            "re-export it or check that the download/copy is complete"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(f"model {model_path} has no graph nodes; is it an ONNX model file?")
    _check_names(model, model_path)
    check_external_data(model, model_path.parent)
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(model_path.parent))
    except Exception as exc:
        raise UserError(f"model {model_path}: cannot read its external data: {exc}") from None
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise UserError(
            f"model {model_path} uses opset {opset}; drpaiq needs opset {MIN_OPSET} or newer "
            "(re-export with a newer opset, 12 or 13 recommended)"
        )
    if not model_inputs(model):
        raise UserError(f"model {model_path} has no inputs; nothing to calibrate with")
    _refuse_half_precision(model, model_path)
    from drpaiq_core.write import EXTERNAL_DATA_THRESHOLD, proto_bytes

    try:
        if proto_bytes(model) < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model, full_check=False)
        else:
            # Over protobuf's 2 GB limit the checker cannot take the model from
            # memory; from the file it reads the graph and checks the data files.
            onnx.checker.check_model(str(model_path), full_check=False)
    except Exception as exc:
        first = first_line(exc)
        raise UserError(f"model {model_path} is not a valid ONNX model: {first}") from None
    _check_finite_weights(model, model_path)
    return model


def model_files(path: Path) -> list[Path]:
    """The model file and the external data files it names (those that exist), in the
    order they first appear; only the model's graph is read, not its weights."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    files = [path]
    try:
        shell = onnx.load(str(path), load_external_data=False)
    except Exception:
        return files
    for tensor in _get_all_tensors(shell):
        if not uses_external_data(tensor):
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                data = path.parent / entry.value
                if data not in files and data.is_file():
                    files.append(data)
    return files


def model_bytes(path: Path) -> int:
    """The bytes of a model on disk: its file and the external data files it names."""
    total = 0
    for file in model_files(path):
        with contextlib.suppress(OSError):
            total += file.stat().st_size
    return total


def _refuse_half_precision(model: onnx.ModelProto, model_path: Path) -> None:
    """Refuse a float16/bfloat16 model (``model.half()`` before export): its weights
    and activations are not the float32 tensors drpaiq quantizes, and ONNX Runtime's
    pre-processing wraps them in Casts, so the result would keep half-precision weights
    behind a QuantizeLinear (a larger file, no int8 weights)."""
    from onnx import TensorProto

    half = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
    weights = {init.name for init in model.graph.initializer}
    found = [
        (f"input {value.name!r}", half[value.type.tensor_type.elem_type])
        for value in model.graph.input
        if value.name not in weights and value.type.tensor_type.elem_type in half
    ]
    found += [
        (f"weight {init.name!r}", half[init.data_type])
        for init in model.graph.initializer
        if init.data_type in half
    ]
    if found:
        what, kind = found[0]
        raise UserError(
            f"model {model_path} is a {kind} model ({what} is {kind}); drpaiq quantizes "
            "float32 models: export the model in float32 (without .half()) and quantize that"
        )


def _check_names(model: onnx.ModelProto, model_path: Path) -> None:
    """Refuse names that are not UTF-8 text. Protobuf hands such a name to Python as
    bytes instead of str, onnx.checker does not look at all of them (dimension names),
    and ONNX Runtime's Python API fails on them deep inside a run."""
    graph = model.graph
    texts: list[str | bytes] = [entry.domain for entry in model.opset_import]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        texts.append(value.name)
        texts.extend(dim.dim_param for dim in value.type.tensor_type.shape.dim)
    for node in graph.node:
        texts.extend([node.name, node.op_type, node.domain, *node.input, *node.output])
        texts.extend(attr.name for attr in node.attribute)
    texts.extend(init.name for init in graph.initializer)
    for text in texts:
        if isinstance(text, bytes):
            raise UserError(
                f"model {model_path} has a name that is not UTF-8 text ({text[:40]!r}); "
                "the file is damaged, re-export it"
            )


def _check_finite_weights(model: onnx.ModelProto, model_path: Path) -> None:
    """Refuse weights whose data does not fit their shape and type (a damaged file:
    onnx.checker lets that through, and every later step would trip over it) and float
    weights with NaN or Inf values."""
    from onnx import numpy_helper

    tensors = [*model.graph.initializer]
    for node in model.graph.node:
        tensors.extend(attr.t for attr in node.attribute if attr.HasField("t"))
    for init in tensors:
        try:
            values = numpy_helper.to_array(init)
        except Exception as exc:
            first = first_line(exc)
            raise UserError(
                f"model {model_path}: weight {init.name!r} does not match its shape "
                f"{list(init.dims)} and type ({first}); the file is damaged, re-export it"
            ) from None
        if init.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        if values.size and not np.all(np.isfinite(values)):
            raise UserError(
                f"model {model_path}: weight {init.name!r} contains NaN or Inf values; "
                "the FP32 model itself is broken, re-export or retrain it"
            )


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        )
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type or 1))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"model input {value.name!r} has element type {tensor_type.elem_type}, which "
                "is not an ONNX tensor type drpaiq can feed; the model file is damaged or "
                "newer than this drpaiq"
            ) from None
        specs.append(InputSpec(value.name, dims, dtype))
    return specs
