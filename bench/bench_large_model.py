"""drpaiq vs ONNX Runtime's quantize_static on a model over protobuf's 2 GB limit.

Usage::

    python bench/bench_large_model.py                 # 16384 x 36000 Gemm: 2.36 GB of weights
    python bench/bench_large_model.py --features 4000 # a quick run, under 2 GB

Builds a deterministic FP32 model, Conv(3->16) -> Relu -> Flatten -> Gemm(16384 x F) ->
Relu -> Gemm(F -> 10), saved with its weights in an external data file (as exporters
write models over 2 GB), then quantizes it in a child process each with

- drpaiq's command line (``drpaiq quantize``, MinMax, per-channel), and
- ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, QInt8,
  MinMax, ``use_external_data_format=True``),

both calibrating on the first ``--images`` shipped calibration images, and prints one
table: wall time and peak resident memory of each child, the INT8 model's bytes on disk
(model file plus data files) and the output SQNR against FP32 on ``--test-images``
shipped test images. Needs about 6 GB of free disk and 16 GB of memory at the default
size; everything is written under a temporary folder (``--keep DIR`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIBRATE = ROOT / "samples" / "data" / "calibrate"
TEST = ROOT / "samples" / "data" / "test"


def build_model(path: Path, features: int) -> None:
    """The FP32 model, its weights in ``<name>.data`` beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)
    flat = 16 * 32 * 32
    weights = {
        "conv_w": rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, 16).astype(np.float32),
        "fc1_w": (rng.standard_normal((flat, features), dtype=np.float32) * 0.01),
        "fc1_b": np.zeros(features, np.float32),
        "fc2_w": (rng.standard_normal((features, 10), dtype=np.float32) * 0.02),
        "fc2_b": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1] * 4, name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1_w", "fc1_b"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "fc2_w", "fc2_b"], ["logits"], name="fc2"),
    ]
    # The big weight goes straight into the data file: a graph holding it inline would
    # be over protobuf's 2 GB limit before it could be saved.
    data_name = f"{path.name}.data"
    big = weights.pop("fc1_w")
    with open(path.parent / data_name, "wb") as data:
        data.write(big.tobytes())
    external = TensorProto(name="fc1_w", dims=big.shape, data_type=TensorProto.FLOAT)
    external.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", "0"), ("length", str(big.nbytes))):
        entry = external.external_data.add()
        entry.key, entry.value = key, value
    del big
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [external, *(numpy_helper.from_array(value, name) for name, value in weights.items())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(model, str(path))


def images(folder: Path, count: int) -> np.ndarray:
    """The first ``count`` PNGs under ``folder`` (sorted), as the nchw_image reader
    makes them with mean 0 and std 1: RGB, pixel / 255, NCHW float32."""
    from PIL import Image

    files = sorted(folder.rglob("*.png"))[:count]
    arrays = [np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0 for f in files]
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


#: Run in a child process; prints {"seconds": ..., "peak_rss_mb": ...} as its last line.
DRPAIQ_CHILD = """
import json, resource, sys, time
from drpaiq_core.cli import main
start = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

ORT_CHILD = """
import contextlib, io, json, resource, sys, time
import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
    QuantType, quant_pre_process, quantize_static)
source, pre, out, feeds = sys.argv[1:5]
data = np.load(feeds)

class Feeds(CalibrationDataReader):
    def __init__(self):
        self.items = iter({"input": data[i:i + 1]} for i in range(len(data)))
    def get_next(self):
        return next(self.items, None)

start = time.perf_counter()
quant_pre_process(source, pre, save_as_external_data=True, all_tensors_to_one_file=True,
                  external_data_location=pre.rsplit("/", 1)[-1] + ".data")
with contextlib.redirect_stdout(io.StringIO()):
    quantize_static(pre, out, Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; its measurements (last stdout line)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def disk_bytes(model: Path) -> int:
    """The model file plus the external data files beside it."""
    return sum(p.stat().st_size for p in model.parent.glob(f"{model.name}*") if p.is_file())


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference**2)) / noise)


def outputs(model: Path, feeds: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(None, {"input": feeds[i : i + 1]})[0] for i in range(len(feeds))]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=36000, help="hidden width (2.36 GB)")
    parser.add_argument("--images", type=int, default=20, help="calibration images")
    parser.add_argument("--test-images", type=int, default=16, help="images SQNR is measured on")
    parser.add_argument("--keep", type=Path, help="keep the models in this folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="drpaiq-large-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        source = work / "large.onnx"
        print(f"building {source} ({16 * 32 * 32 * args.features * 4 / 1e9:.2f} GB of weights)")
        build_model(source, args.features)
        calibration = images(CALIBRATE, args.images)
        np.save(work / "feeds.npy", calibration)
        ours = work / "large_drpaiq.onnx"
        print("quantizing with drpaiq ...")
        measured = {
            "drpaiq": child(
                DRPAIQ_CHILD,
                "-q",
                "quantize",
                str(source),
                "-o",
                str(ours),
                "--calibrate_dataset",
                str(CALIBRATE),
                "--size-limit",
                str(args.images),
                *["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"],
            )
        }
        theirs = work / "large_ort.onnx"
        print("quantizing with ONNX Runtime ...")
        measured["ORT"] = child(
            ORT_CHILD,
            str(source),
            str(work / "large_ort_pre.onnx"),
            str(theirs),
            str(work / "feeds.npy"),
        )
        test = images(TEST, args.test_images)
        reference = outputs(source, test)
        rows = []
        for name, model in (("drpaiq", ours), ("ORT", theirs)):
            rows.append(
                (
                    name,
                    measured[name]["seconds"],
                    measured[name]["peak_rss_mb"] / 1024,
                    disk_bytes(model) / 1e9,
                    sqnr_db(reference, outputs(model, test)),
                )
            )
        print(f"FP32 model on disk: {disk_bytes(source) / 1e9:.2f} GB")
        print(f"{'quantizer':<10} {'wall s':>8} {'peak RSS GB':>12} {'INT8 GB':>8} {'SQNR dB':>8}")
        for name, seconds, rss, size, sqnr in rows:
            print(f"{name:<10} {seconds:8.1f} {rss:12.2f} {size:8.2f} {sqnr:8.2f}")
        print(
            f"calibration: first {args.images} images of {CALIBRATE.relative_to(ROOT)}; "
            f"SQNR of the logits against FP32 on the first {args.test_images} of "
            f"{TEST.relative_to(ROOT)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
