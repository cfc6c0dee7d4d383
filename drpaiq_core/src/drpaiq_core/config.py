"""The options of one quantization run, gathered from the CLI or the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class QuantizeConfig:
    """Everything a quantization run needs. The CLI and the reference-compatible
    Python API both build one of these and call :func:`drpaiq_core.pipeline.quantize`.

    :ivar input_model: the FP32 ONNX model.
    :ivar output_model: where the INT8 QDQ model is written (atomically).
    :ivar reader: the reader plugin name (``nchw_image`` ...), used when
        ``reader_object`` is not given.
    :ivar reader_object: a ready reader: a :class:`~drpaiq_core.plugin_api.Reader`,
        or any object with ``get_next()`` (ONNX Runtime's CalibrationDataReader protocol).
    :ivar calibrate_dataset: folder (or file) the reader reads.
    :ivar calibrate_method: calibrator plugin name (case-insensitive: ``MinMax`` works).
    :ivar norm_mean: per-channel mean for image readers.
    :ivar norm_std: per-channel std for image readers.
    :ivar op_types_to_exclude: op types left in float.
    :ivar nodes_to_exclude: node names left in float.
    :ivar pattern_file: activation-function pattern CSV.
    :ivar activation_type: ``int8`` (default) or ``uint8``.
    :ivar activation_symmetric: symmetric activations.
    :ivar per_channel: per-channel weights (default on).
    :ivar skip_preprocess: skip ONNX Runtime's quantization pre-processing.
    :ivar preprocess_mode: the reference's ``--preprocess_mode`` (``default``).
    :ivar preprocessed_model_output: keep the preprocessed model here.
    :ivar options: advanced ``key value`` options, as strings.
    :ivar size_limit: use at most this many samples (0 = all).
    :ivar batch_size: samples per calibration batch.
    :ivar input_shape: the input shape for models with dynamic H/W.
    :ivar debug_dir: write calibration debug output (entropy histograms) here.
    :ivar summary_json: write the run summary as JSON here.
    :ivar diagnose_samples: after planning, run this many calibration samples to find
        where the quantization error comes from (0, the default: no diagnosis); see
        :mod:`drpaiq_core.diagnose`.
    :ivar exclude_suggested: write the model with the diagnosis's suggested exclusions
        applied (needs ``diagnose_samples``): the model a run with ``-exn`` and the
        suggested nodes gives.
    :ivar load_ranges: a ranges file (see :mod:`drpaiq_core.ranges_file`): the tensors it
        names take its ranges and only the others are calibrated.
    :ivar save_ranges: write every range the run used or read to this ranges file.
    :ivar quiet: no progress bars or info lines.
    :ivar tvm: the reference's ``--tvm`` flow (built-in TVM reader).
    :ivar datareader_path: the reference's ``--datareader_path``: a ``.py`` file whose
        reader class is imported and constructed at run time (this runs the user's code).
    """

    input_model: Path
    output_model: Path
    reader: str | None = None
    reader_object: Any = None
    calibrate_dataset: Path | None = None
    calibrate_method: str = "minmax"
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None
    op_types_to_exclude: tuple[str, ...] = ()
    nodes_to_exclude: tuple[str, ...] = ()
    pattern_file: Path | None = None
    activation_type: str = "int8"
    activation_symmetric: bool = False
    per_channel: bool = True
    skip_preprocess: bool = False
    preprocess_mode: str = "default"
    preprocessed_model_output: Path | None = None
    options: dict[str, str] = field(default_factory=dict)
    size_limit: int = 0
    batch_size: int = 1
    input_shape: tuple[int, ...] | None = None
    debug_dir: Path | None = None
    summary_json: Path | None = None
    diagnose_samples: int = 0
    exclude_suggested: bool = False
    load_ranges: Path | None = None
    save_ranges: Path | None = None
    quiet: bool = False
    tvm: bool = False
    datareader_path: Path | None = None
