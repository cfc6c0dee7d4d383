"""drpaiq vs ONNX Runtime's quantize_static on small PyTorch exports of common CNNs.

Each model of ``bench/export_models.py`` (a YOLO-like detector, a YOLOv5 head with box
decoding, a DeepLab-like segmenter, an HRNet-like pose model, a MobileNetV3-like
classifier, a Keras-style NHWC model, a pruned model and a few edge cases, all 64x64) is
built in PyTorch with fixed seeds, exported with ``torch.onnx.export(dynamo=False)`` and
quantized twice with the same calibration method and the same calibration images: by
drpaiq (its Python API) and by ONNX Runtime (``quant_pre_process`` then
``quantize_static``: QDQ, per-channel, QInt8 activations and weights). One table gives,
per model and method, each INT8 model's SQNR against the FP32 model, their difference,
each quantize wall time, the ratio of the two INT8 models' ONNX Runtime CPU inference
times (one thread, one image; issue 3's target is <= 1.1x: drpaiq's QDQ placement must
let ONNX Runtime fuse integer kernels as well as its own) and how many nodes drpaiq left
in float; a line follows for each row where drpaiq is more than 1 dB worse than ONNX
Runtime or its INT8 model more than 1.1x slower.

    python bench/bench_exports.py                       # all models, MinMax and Entropy
    python bench/bench_exports.py --models yolo,pruned --methods MinMax
    python bench/bench_exports.py --opset 17 --keep /tmp/exports   # keep every model
    python bench/bench_exports.py --option bias_correction=True   # drpaiq with an advanced option
    python bench/bench_exports.py --diagnose     # + what --diagnose's suggested -exn gains

With ``--diagnose`` two columns follow: how many nodes drpaiq's ``--diagnose`` (run on
32 of the calibration images) suggests to exclude, and what quantizing again with
that ``-exn`` list gains over drpaiq's plain model on the test images, which the
diagnosis never sees.

SQNR = 10 log10(sum(fp32^2) / sum((fp32 - int8)^2)) over all outputs of the first 200
images of ``samples/data/test`` (sorted, sub-folders included), which calibration never
sees, concatenated; higher is better, and 6 dB is one bit. Calibration uses the first 40
images of ``samples/data/calibrate``; both sets are read by drpaiq's own image reader
(``nchw_image``, or ``nhwc_image`` for the NHWC model) at 64x64 with mean 0.5 and std
0.25, and the same arrays measure the BatchNorm statistics, feed ONNX Runtime's
calibration and the SQNR runs. The models are untrained (seeded random weights,
BatchNorm statistics measured on those images, random BatchNorm gamma and beta), so
SQNR, not accuracy, is what they can tell; they catch what breaks on real exports.

Needs torch (``pip install torch==2.13.0``, as in ``samples/requirements-train.txt``),
never needed by drpaiq itself. Quantize times exclude imports (one untimed run of each
quantizer first). The float count is the summary's "left in float" nodes, without the
integer shape arithmetic it counts apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from drpaiq_core.summary import Summary
    from export_models import ExportModel

ROOT = Path(__file__).resolve().parent.parent
CALIBRATE = ROOT / "samples" / "data" / "calibrate"
TEST = ROOT / "samples" / "data" / "test"
CALIBRATION_IMAGES = 40
TEST_IMAGES = 200
#: Calibration images the diagnosis runs (--diagnose): drpaiq's default.
DIAGNOSE_SAMPLES = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: A row is reported when drpaiq's SQNR is lower than ONNX Runtime's by more than this.
WORSE_DB = 1.0
#: ... and when its INT8 model runs more than this many times slower than ORT's.
SLOWER = 1.1
TORCH = "torch==2.13.0"


@dataclass
class Result:
    """One quantizer's run on one model: SQNR (dB), wall time (s), the INT8 model's
    inference time (ms per image), the error if it failed."""

    sqnr: float = float("nan")
    seconds: float = float("nan")
    infer_ms: float = float("nan")
    error: str = ""


@dataclass
class Row:
    """One line of the table."""

    model: str
    method: str
    drpaiq: Result
    ort: Result
    float_nodes: int | None = None
    #: With --diagnose: how many nodes the diagnosis suggested to exclude, and the SQNR
    #: of drpaiq's model quantized with them excluded.
    excluded: int | None = None
    diagnosed_sqnr: float = float("nan")

    @property
    def difference(self) -> float:
        """drpaiq's SQNR minus ONNX Runtime's (dB; negative: drpaiq is worse)."""
        return self.drpaiq.sqnr - self.ort.sqnr

    @property
    def infer_ratio(self) -> float:
        """drpaiq's INT8 inference time over ONNX Runtime's INT8 model's."""
        return self.drpaiq.infer_ms / self.ort.infer_ms


# -- Data ---------------------------------------------------------------------------


def read_images(folder: Path, layout: str, size: int, limit: int) -> np.ndarray:
    """The first ``limit`` images of ``folder`` as drpaiq's image reader prepares them
    (sorted, recursive; resized to ``size`` x ``size``; (pixel/255 - MEAN) / STD), as
    one float32 array in ``layout`` with the batch first."""
    from drpaiq_core.plugin_api import InputSpec, ReaderContext
    from drpaiq_core.plugins import get_plugin_host

    shape = (1, size, size, 3) if layout == "NHWC" else (1, 3, size, size)
    context = ReaderContext(
        dataset=folder,
        model_path=None,
        inputs=[InputSpec("images", shape, np.dtype(np.float32))],
        norm_mean=MEAN,
        norm_std=STD,
        size_limit=limit,
        warn=lambda message: print(f"reader: {message}", file=sys.stderr),
    )
    reader = get_plugin_host().readers.get(reader_name(layout))(context)
    return np.concatenate([batch.feeds["images"] for batch in reader.batches()])


def reader_name(layout: str) -> str:
    """drpaiq's image reader for an input layout."""
    return "nhwc_image" if layout == "NHWC" else "nchw_image"


# -- Measuring ----------------------------------------------------------------------


def run_outputs(path: Path, images: np.ndarray) -> list[np.ndarray]:
    """Every output of the model at ``path`` for each image (run one at a time, the
    models having a batch of 1), each output's results concatenated."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs = [session.run(None, {"images": images[i : i + 1]}) for i in range(len(images))]
    return [np.concatenate([run[k] for run in runs]) for k in range(len(runs[0]))]


def inference_ms(
    paths: Sequence[Path], image: np.ndarray, runs: int = 50, rounds: int = 7
) -> list[float]:
    """ONNX Runtime CPU inference time of one image (ms) for each model, one thread:
    after a warm-up, ``rounds`` rounds of ``runs`` runs, the models taking turns within
    each round (so that a busy moment of the machine hits all of them), the best round
    of each. Whether the QDQ placement lets ONNX Runtime fuse the model into integer
    kernels shows here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for path in paths
    ]
    feed = {"images": image[None]}
    for session in sessions:
        for _ in range(10):
            session.run(None, feed)
    best = [float("inf")] * len(sessions)
    for _ in range(rounds):
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            for _ in range(runs):
                session.run(None, feed)
            best[k] = min(best[k], (time.perf_counter() - start) / runs)
    return [seconds * 1000 for seconds in best]


def sqnr(reference: Sequence[np.ndarray], quantized: Sequence[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio (dB) over all outputs concatenated."""
    signal = np.concatenate([r.astype(np.float64).ravel() for r in reference])
    noisy = np.concatenate([q.astype(np.float64).ravel() for q in quantized])
    noise = float(np.sum((signal - noisy) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(np.sum(signal**2)) / noise))


# -- Quantizing ---------------------------------------------------------------------


def quantize_drpaiq(
    source: Path,
    out: Path,
    layout: str,
    method: str,
    options: Mapping[str, str] | None = None,
    **fields: Any,
) -> tuple[float, int, Summary]:
    """Quantize with drpaiq's Python API (``fields``: more QuantizeConfig fields); the
    wall time (s), the number of nodes its summary lists as left in float, the summary."""
    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.pipeline import quantize
    from drpaiq_core.select import NO_FLOAT_OUTPUT

    start = time.perf_counter()
    summary = quantize(
        QuantizeConfig(
            input_model=source,
            output_model=out,
            reader=reader_name(layout),
            calibrate_dataset=CALIBRATE,
            calibrate_method=method,
            norm_mean=MEAN,
            norm_std=STD,
            size_limit=CALIBRATION_IMAGES,
            summary_json=out.with_suffix(".json"),
            quiet=True,
            options=dict(options or {}),
            **fields,
        )
    )
    seconds = time.perf_counter() - start
    left = sum(1 for _, why in summary.float_nodes.values() if why != NO_FLOAT_OUTPUT)
    return seconds, left, summary


def diagnosed(
    fp32: Path, folder: Path, spec: ExportModel, method: str, options: Mapping[str, str] | None
) -> tuple[tuple[str, ...], Path]:
    """drpaiq's diagnosis of one model (on DIAGNOSE_SAMPLES of the calibration
    images), and the model quantized again with its suggested exclusions (the plain
    model when it suggests none)."""
    base = folder / f"{spec.name}_{method}_diagnosed.onnx"
    _, _, summary = quantize_drpaiq(
        fp32, base, spec.layout, method, options, diagnose_samples=DIAGNOSE_SAMPLES
    )
    suggested = summary.diagnosis.suggested
    if not suggested:
        return (), base
    out = folder / f"{spec.name}_{method}_excluded.onnx"
    quantize_drpaiq(fp32, out, spec.layout, method, options, nodes_to_exclude=suggested)
    return suggested, out


def quantize_ort(source: Path, out: Path, images: np.ndarray, method: str, scratch: Path) -> float:
    """Quantize with ONNX Runtime (see ``ort_baseline``), calibrating on ``images`` one
    at a time; the wall time (s)."""
    from ort_baseline import ort_quantize_static

    feeds = ({"images": images[i : i + 1]} for i in range(len(images)))
    return ort_quantize_static(source, out, feeds, method, scratch)


def failure(exc: Exception) -> str:
    """An exception in one line."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"


def bench_model(
    spec: ExportModel,
    methods: Sequence[str],
    opset: int,
    folder: Path,
    scratch: Path,
    options: Mapping[str, str] | None = None,
    test_images: int = TEST_IMAGES,
    diagnose: bool = False,
) -> list[Row]:
    """Build, export and quantize one model with each method (drpaiq with the advanced
    ``options``), measured on ``test_images`` images; its table rows. With ``diagnose``,
    also drpaiq's model quantized with the exclusions its diagnosis suggests."""
    from export_models import build, export

    calibration = read_images(CALIBRATE, spec.layout, spec.size, CALIBRATION_IMAGES)
    test = read_images(TEST, spec.layout, spec.size, test_images)
    fp32 = folder / f"{spec.name}.onnx"
    export(build(spec, calibration), calibration[:1], fp32, opset)
    reference = run_outputs(fp32, test)
    rows = []
    for method in methods:
        row = Row(spec.name, method, Result(), Result())
        ours = folder / f"{spec.name}_{method}_drpaiq.onnx"
        theirs = folder / f"{spec.name}_{method}_ort.onnx"
        try:
            row.drpaiq.seconds, row.float_nodes, _ = quantize_drpaiq(
                fp32, ours, spec.layout, method, options
            )
            row.drpaiq.sqnr = sqnr(reference, run_outputs(ours, test))
            if diagnose:
                suggested, excluded = diagnosed(fp32, folder, spec, method, options)
                row.excluded = len(suggested)
                row.diagnosed_sqnr = sqnr(reference, run_outputs(excluded, test))
        except Exception as exc:
            row.drpaiq.error = failure(exc)
        try:
            row.ort.seconds = quantize_ort(fp32, theirs, calibration, method, scratch)
            row.ort.sqnr = sqnr(reference, run_outputs(theirs, test))
        except Exception as exc:
            row.ort.error = failure(exc)
        if not (row.drpaiq.error or row.ort.error):
            row.drpaiq.infer_ms, row.ort.infer_ms = inference_ms([ours, theirs], test[0])
        rows.append(row)
    return rows


def warm_up(spec: ExportModel, opset: int, scratch: Path) -> None:
    """One untimed run of each quantizer, so that neither's time includes imports."""
    folder = scratch / "warmup"
    folder.mkdir()
    bench_model(spec, ["MinMax"], opset, folder, scratch)


# -- Reporting ----------------------------------------------------------------------

COLUMNS = (
    "model",
    "method",
    "drpaiq SQNR dB",
    "ORT SQNR dB",
    "difference dB",
    "drpaiq s",
    "ORT s",
    "infer ratio",
    "drpaiq float nodes",
)
#: With --diagnose: the nodes the diagnosis suggested, and what excluding them gained.
DIAGNOSE_COLUMNS = ("suggested -exn nodes", "-exn gain dB")


def cells(row: Row) -> list[str]:
    """The table cells of ``row``."""

    def number(value: float, fmt: str) -> str:
        # Adding 0.0 turns a -0.0 from rounding into 0.0, so that no "-0.00" is printed.
        return "failed" if np.isnan(value) else format(round(value, 2) + 0.0, fmt)

    return [
        row.model,
        row.method,
        number(row.drpaiq.sqnr, ".2f"),
        number(row.ort.sqnr, ".2f"),
        number(row.difference, "+.2f"),
        number(row.drpaiq.seconds, ".2f"),
        number(row.ort.seconds, ".2f"),
        number(row.infer_ratio, ".2f"),
        "-" if row.float_nodes is None else str(row.float_nodes),
        *(
            []
            if row.excluded is None
            else [str(row.excluded), number(row.diagnosed_sqnr - row.drpaiq.sqnr, "+.2f")]
        ),
    ]


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table with padded columns (text left, numbers right)."""
    body = [cells(row) for row in rows]
    columns = COLUMNS + (DIAGNOSE_COLUMNS if body and len(body[0]) > len(COLUMNS) else ())
    widths = [max(len(text) for text in column) for column in zip(columns, *body)]

    def line(texts: Sequence[str]) -> str:
        padded = [
            text.ljust(width) if i < 2 else text.rjust(width)
            for i, (text, width) in enumerate(zip(texts, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths))
    return "\n".join([line(columns), rule + "|", *(line(b) for b in body)])


def findings(rows: Sequence[Row]) -> list[str]:
    """A line per failed run and per row where drpaiq is more than WORSE_DB worse."""
    lines = []
    for row in rows:
        for who, result in (("drpaiq", row.drpaiq), ("ONNX Runtime", row.ort)):
            if result.error:
                lines.append(f"{row.model} {row.method}: {who} failed: {result.error}")
        if row.difference < -WORSE_DB:
            lines.append(f"{row.model} {row.method}: worse than ORT by {-row.difference:.2f} dB")
        if row.infer_ratio > SLOWER:
            lines.append(
                f"{row.model} {row.method}: INT8 inference {row.infer_ratio:.2f}x ORT's "
                f"(target <= {SLOWER}x)"
            )
    return lines


# -- Command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--methods", default="MinMax,Entropy", help="calibration methods")
    parser.add_argument("--opset", type=int, default=13, help="the export's ONNX opset")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the FP32 and INT8 models (and summaries)"
    )
    parser.add_argument(
        "--test-images",
        type=int,
        default=TEST_IMAGES,
        help=f"test images the SQNR is measured on (default {TEST_IMAGES})",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also quantize with the exclusions drpaiq's --diagnose suggests and give "
        "their gain on the test images",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an advanced option for drpaiq (repeatable), e.g. --option bias_correction=True",
    )
    args = parser.parse_args(argv)
    if args.test_images < 1:
        parser.error("--test-images must be at least 1")
    if any("=" not in item for item in args.option):
        parser.error("--option takes KEY=VALUE")
    return args


def select_models(names: str) -> list[ExportModel]:
    """The models named in ``names`` (comma-separated; empty: all), in table order."""
    from export_models import MODELS

    if not names:
        return list(MODELS)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = [spec.name for spec in MODELS]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [spec for spec in MODELS if spec.name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(
            f"bench_exports.py needs torch to build the models: pip install {TORCH}",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    specs = select_models(args.models)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    logging.getLogger("drpaiq").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)

    rows: list[Row] = []
    from drpaiq_core.preprocess import working_directory

    with tempfile.TemporaryDirectory(prefix="bench-exports-") as tmp:
        scratch = Path(tmp)
        folder = args.keep.resolve() if args.keep else scratch
        folder.mkdir(parents=True, exist_ok=True)
        with working_directory(scratch):
            warm_up(specs[0], args.opset, scratch)
            options = dict(item.split("=", 1) for item in args.option)
            for spec in specs:
                rows_of_model = bench_model(
                    spec,
                    methods,
                    args.opset,
                    folder,
                    scratch,
                    options,
                    args.test_images,
                    args.diagnose,
                )
                for row in rows_of_model:
                    rows.append(row)
                    print(" | ".join(cells(row)), file=sys.stderr)
    print(
        f"SQNR over all outputs of the first {args.test_images} images of samples/data/test; "
        f"calibration: the first {CALIBRATION_IMAGES} of samples/data/calibrate; "
        f"opset {args.opset}; difference = drpaiq - ORT"
        + "".join(f"; drpaiq with {item.replace('=', ' ', 1)}" for item in args.option)
    )
    print(table(rows))
    from ort_baseline import stand_in_note

    note = stand_in_note(methods)
    if note:
        print(note)
    lines = findings(rows)
    print("\n".join(lines) if lines else f"drpaiq is within {WORSE_DB:g} dB of ORT on every row")
    return 1 if any(row.drpaiq.error or row.ort.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
