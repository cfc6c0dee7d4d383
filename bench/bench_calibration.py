"""Calibration cost: drpaiq vs ONNX Runtime's quantize_static vs bare FP32 inference.

One run, one model, one set of images; for each method (minmax, entropy, percentile)
and each number of images N (32, 128, 512) it measures, each in a fresh process:

* drpaiq: wall time and peak RSS of a whole ``drpaiq --quiet --reader R quantize ...``
  process, and the wall time of its calibration step (the ``calibrate()`` call: augmented
  session, reading and decoding the images, inference, statistics, range search);
* ONNX Runtime: wall time and peak RSS of ``quant_pre_process`` + ``quantize_static``
  (QDQ, per-channel, QInt8 activations and weights, the same method); skipped, and said
  so, where its estimate exceeds 10 GB (it keeps every activation of every image);
* FP32: the time ONNX Runtime needs to just run the FP32 model over the same images,
  one image per run as the calibration reader yields them, measured two ways:
  ``read+FP32`` is the plain script (create a session, then read each image with the
  same reader and run it), the best of three session configurations (default, idle
  threads not spinning, one thread); it is the denominator of the targets, since
  drpaiq's calibration step also creates a session and reads the images. ``FP32`` is
  the strict one: a warm default session over images decoded beforehand; the ratio
  to it, printed beside, charges drpaiq alone with reading the images and creating
  its session.

Every measurement is repeated (``--repeat``, default 2; the rounds interleave FP32 and
the drpaiq methods) and the fastest kept; this matters on a shared machine.

and prints one table, the entropy search time per tensor, and the targets of issue 4:
peak RSS at N=512 <= 1.15x N=32 (entropy, percentile); entropy <= 1.3x minmax RSS at
N=512; calibration wall time <= 1.25x (minmax) and <= 1.5x (entropy, percentile) the
time to run the FP32 model over the images (the strict ratio is printed beside it).

    python bench/bench_calibration.py
    python bench/bench_calibration.py --sizes 32 128 --methods entropy --no-ort

Peak RSS is the child's ``ru_maxrss`` as returned by ``wait4`` for that one process.
The N images are the sample calibration images followed by the sample test images, in
name order, copied into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
DEFAULT_MODEL = SAMPLES / "modA_resnet_nchw.onnx"
DEFAULT_MEAN = (0.2860, 0.2860, 0.2860)
DEFAULT_STD = (0.3530, 0.3530, 0.3530)
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MSE"}
ORT_LIMIT_BYTES = 10 * 1024**3


# ---------------------------------------------------------------------------
# Children: each measurement runs in a process of its own
# ---------------------------------------------------------------------------


def child_drpaiq(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the drpaiq CLI in this process, timing its calibration step and every
    entropy range search (instrumentation only: the run itself is unchanged)."""
    import drpaiq_core.calibrate as calibrate_module
    from drpaiq_plugins_calibrators.entropy import EntropyCalibrator

    timings: dict[str, Any] = {"search_ms": []}
    original_calibrate = calibrate_module.calibrate
    original_compute = EntropyCalibrator.compute

    def timed_calibrate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original_calibrate(*args, **kwargs)
        timings["calibrate_s"] = time.perf_counter() - start
        return result

    def timed_compute(self: Any, state: Any) -> Any:
        start = time.perf_counter()
        result = original_compute(self, state)
        timings["search_ms"].append((time.perf_counter() - start) * 1000)
        return result

    calibrate_module.calibrate = timed_calibrate  # type: ignore[assignment]
    EntropyCalibrator.compute = timed_compute  # type: ignore[method-assign]
    from drpaiq_core.cli import main

    code: Any = 0
    try:
        main(spec["argv"])
    except SystemExit as exc:
        code = exc.code
    timings["exit_code"] = code
    return timings


def child_ort(spec: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime's pre-processing and quantize_static over the same images."""
    from ort_baseline import ort_quantize_static

    reader = open_reader(spec)
    workdir = Path(spec["workdir"])
    feeds = (batch.feeds for batch in reader.batches())
    ort_quantize_static(
        Path(spec["model"]), workdir / "ort_q.onnx", feeds, METHODS[spec["method"]], workdir
    )
    return {}


def child_fp32(spec: dict[str, Any]) -> dict[str, Any]:
    """Time plain FP32 inference over the images, one image per run, with ONNX Runtime's
    default session and two other configurations (idle threads not spinning, one
    thread), two ways each: the plain script (create a session, then read each image
    with the same reader and run it), and the strict one (a warm session over images
    decoded beforehand)."""
    import onnxruntime

    reader = open_reader(spec)
    start = time.perf_counter()
    feeds = [batch.feeds for batch in reader.batches()]
    decode_s = time.perf_counter() - start
    report: dict[str, float] = {"decode_s": decode_s}
    for label, spinning, threads in (("default", "1", 0), ("nospin", "0", 0), ("one", "1", 1)):
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.intra_op_num_threads = threads
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(
            spec["model"], options, providers=["CPUExecutionProvider"]
        )
        report[f"load_{label}_s"] = time.perf_counter() - start
        session.run(None, feeds[0])  # first run allocates; not part of the steady cost
        start = time.perf_counter()
        for feed in feeds:
            session.run(None, feed)
        report[f"run_{label}_s"] = time.perf_counter() - start
        # The plain script: create a session, then read each image and run it.
        start = time.perf_counter()
        fresh = onnxruntime.InferenceSession(
            spec["model"], options, providers=["CPUExecutionProvider"]
        )
        for batch in open_reader(spec).batches():
            fresh.run(None, batch.feeds)
        report[f"read_run_{label}_s"] = time.perf_counter() - start
    labels = ("default", "nospin", "one")
    report["fp32_s"] = report["run_default_s"]
    report["load_s"] = report["load_default_s"]
    report["best_s"] = min(report[f"run_{label}_s"] for label in labels)
    report["read_run_s"] = min(report[f"read_run_{label}_s"] for label in labels)
    return report


def open_reader(spec: dict[str, Any]) -> Any:
    import onnx
    from drpaiq_core.load import model_inputs
    from drpaiq_core.plugin_api import ReaderContext
    from drpaiq_core.plugins import get_plugin_host

    model = onnx.load(spec["model"], load_external_data=False)
    context = ReaderContext(
        dataset=Path(spec["images"]),
        model_path=Path(spec["model"]),
        inputs=model_inputs(model),
        norm_mean=tuple(spec["mean"]),
        norm_std=tuple(spec["std"]),
        batch_size=1,
    )
    return get_plugin_host().readers.get(spec["reader"])(context)


CHILDREN = {"drpaiq": child_drpaiq, "ort": child_ort, "fp32": child_fp32}


def fastest(kind: str, spec: dict[str, Any], workdir: Path, repeat: int) -> dict[str, Any]:
    """The report of the fastest of ``repeat`` runs in a row (see :func:`best_of`)."""
    return best_of(kind, [run_child(kind, spec, workdir) for _ in range(max(1, repeat))])


def best_of(kind: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of the fastest run; peak RSS is the smallest seen (the runs do the
    same work; a larger peak is noise from the machine)."""
    key = "calibrate_s" if kind == "drpaiq" else ("fp32_s" if kind == "fp32" else "wall_s")
    best = dict(min(reports, key=lambda r: r.get(key, r["wall_s"])))
    best["peak_mb"] = min(r["peak_mb"] for r in reports)
    best["wall_s"] = min(r["wall_s"] for r in reports)
    if kind == "fp32":
        for name in ("fp32_s", "best_s", "load_s", "decode_s", "read_run_s"):
            best[name] = min(r[name] for r in reports)
    return best


def run_child(kind: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one measurement in a fresh Python; returns its report plus ``wall_s`` and
    ``peak_mb`` (that process's own maximum resident set size)."""
    report_path = workdir / f"report_{kind}.json"
    report_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, BENCH_REPORT=str(report_path)),
    )
    assert process.stderr is not None
    # wait4 gives the resource usage of exactly this child (ru_maxrss in KB on Linux).
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode != 0 or not report_path.exists():
        tail = errors.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{kind} child failed ({process.returncode}): {' | '.join(tail)}")
    report = json.loads(report_path.read_text())
    report.update(wall_s=wall, peak_mb=usage.ru_maxrss / 1024)
    return report


def child_main(kind: str, spec_text: str) -> int:
    report = CHILDREN[kind](json.loads(spec_text))
    Path(os.environ["BENCH_REPORT"]).write_text(json.dumps(report))
    code = report.get("exit_code", 0)
    return int(code) if isinstance(code, int) else 1


# ---------------------------------------------------------------------------
# The orchestrating process
# ---------------------------------------------------------------------------


def image_pool() -> list[Path]:
    """Calibration images, then test images, each in name order."""
    pool = sorted((SAMPLES / "data" / "calibrate").glob("*.png"))
    pool += sorted((SAMPLES / "data" / "test").glob("*/*.png"))
    return pool


def make_image_set(pool: list[Path], count: int, folder: Path) -> Path:
    if count > len(pool):
        raise SystemExit(f"only {len(pool)} sample images available, {count} asked for")
    folder.mkdir(parents=True)
    for index, source in enumerate(pool[:count]):
        shutil.copyfile(source, folder / f"{index:04d}_{source.name}")
    return folder


def random_resnet18(path: Path) -> Path:
    """A ResNet-18-sized stand-in for the 32x32 sample (same input, random weights): the
    compute per activation of a full-width network, for comparison with the narrow
    sample. Deterministic."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes: list[Any] = []
    weights: list[Any] = []

    def conv(x: str, cin: int, cout: int, stride: int, name: str, kernel: int = 3) -> str:
        w = rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2 / (cin * kernel**2))
        weights.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
        weights.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"))
        pad = kernel // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [name],
                name=name,
                pads=[pad] * 4,
                strides=[stride, stride],
            )
        )
        return name

    def relu(x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{x}_relu"], name=f"{x}_relu"))
        return f"{x}_relu"

    x, channels = relu(conv("input", 3, 64, 1, "stem")), 64
    stages = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]
    for index, (width, stride) in enumerate(stages):
        y = relu(conv(x, channels, width, stride, f"b{index}a"))
        y = conv(y, width, width, 1, f"b{index}b")
        if stride != 1 or width != channels:
            x = conv(x, channels, width, stride, f"b{index}s", kernel=1)
        nodes.append(helper.make_node("Add", [y, x], [f"b{index}add"], name=f"b{index}add"))
        x, channels = relu(f"b{index}add"), width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat"))
    fc = (rng.standard_normal((10, 512)) * 0.05).astype(np.float32)
    weights += [
        numpy_helper.from_array(fc, "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes.append(
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)
    )
    graph = helper.make_graph(
        nodes,
        "random_resnet18",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def activation_bytes_per_image(model_path: Path) -> int:
    """Bytes of every float tensor a node produces, for one image (shape inference at
    batch 1): what ONNX Runtime's calibrators keep per image."""
    import onnx

    model = onnx.load(str(model_path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    produced = {out for node in inferred.graph.node for out in node.output}
    total = 0
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if value.name not in produced or tensor_type.elem_type != onnx.TensorProto.FLOAT:
            continue
        size = 1
        for dim in tensor_type.shape.dim:
            size *= dim.dim_value if dim.HasField("dim_value") else 1
        total += 4 * size
    return total


def entropy_search_ms() -> dict[int, float]:
    """Median time of the KL search of one side at 1024 and 2048 occupied bins (the two
    ends of a side's resolution at num_bins 2048), heavy-tailed synthetic data, every
    candidate at 255 levels (a ReLU output's; the admissible candidates are fewer)."""
    import numpy as np
    from drpaiq_plugins_calibrators.divergence import kl_divergence_curve

    rng = np.random.default_rng(0)
    out = {}
    for bins in (1024, 2048):
        counts = np.bincount(
            np.minimum((np.abs(rng.standard_t(3, 2_000_000)) * bins / 40).astype(int), bins - 1),
            minlength=bins,
        )
        times = []
        for _ in range(30):
            start = time.perf_counter()
            kl_divergence_curve(counts, 255)
            times.append((time.perf_counter() - start) * 1000)
        out[bins] = statistics.median(times)
    return out


def drpaiq_argv(spec: dict[str, Any], method: str, output: Path) -> list[str]:
    def listed(values: tuple[float, ...]) -> list[str]:
        # The reference form: "[a," "b," "c]" as three shell words.
        words = [f"{v:g}," for v in values]
        words[0] = "[" + words[0]
        words[-1] = words[-1].rstrip(",") + "]"
        return words

    return [
        "--quiet",
        "--reader",
        spec["reader"],
        "quantize",
        "--input_model_path",
        spec["model"],
        "--output_model_path",
        str(output),
        "--calibrate_dataset",
        spec["images"],
        "--calibrate_method",
        METHODS[method],
        "--norm_mean",
        *listed(tuple(spec["mean"])),
        "--norm_std",
        *listed(tuple(spec["std"])),
    ]


def fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--reader", default="nchw_image")
    parser.add_argument("--norm-mean", type=float, nargs=3, default=DEFAULT_MEAN)
    parser.add_argument("--norm-std", type=float, nargs=3, default=DEFAULT_STD)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime quantize_static")
    parser.add_argument("--no-drpaiq", action="store_true", help="skip the drpaiq runs")
    parser.add_argument(
        "--random-resnet18",
        action="store_true",
        help="instead of --model, a ResNet-18-sized stand-in with random weights (same input)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (fastest kept)")
    parser.add_argument("--ort-repeat", type=int, default=1, help="runs per ONNX Runtime quantize")
    args = parser.parse_args()
    keep = tempfile.TemporaryDirectory(prefix="drpaiq-bench-model-")
    if args.random_resnet18:
        args.model = random_resnet18(Path(keep.name) / "random_resnet18.onnx")
    if not args.model.is_file():
        print(f"model {args.model} not found", file=sys.stderr)
        return 2

    per_image = activation_bytes_per_image(args.model)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    fp32: dict[int, dict[str, Any]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="drpaiq-bench-") as tmp:
        workdir = Path(tmp)
        pool = image_pool()
        for count in args.sizes:
            images = make_image_set(pool, count, workdir / f"images_{count}")
            spec = {
                "model": str(args.model),
                "reader": args.reader,
                "images": str(images),
                "mean": list(args.norm_mean),
                "std": list(args.norm_std),
                "workdir": str(workdir),
            }
            # The repeats are interleaved (FP32, then each method, then again), so that a
            # slow spell of a shared machine does not fall on one side of a ratio only.
            # FP32 also runs once more at the end: right after heavy children (ONNX
            # Runtime's calibration holds GBs) it measured up to 1.6x slower, and its
            # fastest run is the reference.
            measured: dict[str, list[dict[str, Any]]] = {"fp32": []}
            for _ in range(max(1, args.repeat)):
                measured["fp32"].append(run_child("fp32", spec, workdir))
                for method in [] if args.no_drpaiq else args.methods:
                    output = workdir / "drpaiq_q.onnx"
                    child = dict(spec, argv=drpaiq_argv(spec, method, output))
                    report = run_child("drpaiq", child, workdir)
                    if report.get("exit_code"):
                        raise RuntimeError(f"drpaiq failed for {method} N={count}")
                    measured.setdefault(method, []).append(report)
            measured["fp32"].append(run_child("fp32", spec, workdir))
            fp32[count] = best_of("fp32", measured["fp32"])
            for method in args.methods:
                row: dict[str, Any] = {}
                if not args.no_drpaiq:
                    row["drpaiq"] = best_of("drpaiq", measured[method])
                if not args.no_ort:
                    estimate = 2 * per_image * count + 512 * 1024**2
                    if estimate > ORT_LIMIT_BYTES:
                        row["ort_skipped"] = estimate
                        notes.append(
                            f"ORT {METHODS[method]} N={count} skipped: about "
                            f"{estimate / 1024**3:.1f} GB estimated (> 10 GB)"
                        )
                    else:
                        row["ort"] = fastest(
                            "ort", dict(spec, method=method), workdir, args.ort_repeat
                        )
                rows[(method, count)] = row
                print(f"  measured {method} N={count}", file=sys.stderr)

    print(
        f"calibration benchmark: {args.model.name}, reader {args.reader}, batch 1, "
        f"{os.cpu_count()} CPUs; activations {per_image / 1024**2:.1f} MB per image"
    )
    header = (
        f"{'method':<10} {'N':>4} | {'drpaiq s':>8} {'RSS MB':>7} {'calib s':>7} | "
        f"{'ORT s':>7} {'RSS MB':>7} | {'FP32 s':>6} {'decode s':>8} {'read+FP32 s':>11} | "
        f"{'calib/(read+FP32)':>17} {'calib/FP32':>10}"
    )
    print(header)
    print("-" * len(header))
    for (method, count), row in rows.items():
        ours = row.get("drpaiq", {})
        ort = row.get("ort", {})
        base = fp32[count]
        calib = ours.get("calibrate_s")
        ratio = calib / base["read_run_s"] if calib else None
        strict = calib / base["fp32_s"] if calib else None
        ort_wall = "skipped" if "ort_skipped" in row else fmt(ort.get("wall_s"), 7)
        print(
            f"{method:<10} {count:>4} | {fmt(ours.get('wall_s'), 8)} "
            f"{fmt(ours.get('peak_mb'), 7, 0)} {fmt(calib, 7)} | {ort_wall:>7} "
            f"{fmt(ort.get('peak_mb'), 7, 0)} | {base['fp32_s']:>6.3f} "
            f"{base['decode_s']:>8.3f} {base['read_run_s']:>11.3f} | {fmt(ratio, 17)} "
            f"{fmt(strict, 10)}"
        )
    print(
        "drpaiq s / RSS MB: the whole quantize process; calib s: its calibrate() step "
        "(session, reading and decoding, inference, statistics, range search); ORT s / RSS "
        "MB: quant_pre_process + quantize_static; FP32 s: ONNX Runtime's default session "
        "over the already decoded images, one per run; decode s: reading and decoding the "
        "images alone; read+FP32 s: creating a session, then reading each image with the same "
        "reader and running it, best of three session configurations (what running the "
        "FP32 model over the image folder takes)"
    )
    for note in notes:
        print(note)

    search = entropy_search_ms()
    print(
        f"entropy search per side (synthetic): {search[1024]:.1f} ms at 1024 bins, "
        f"{search[2048]:.1f} ms at 2048 bins (target <= 10 ms per tensor at 2048)"
    )
    real = [
        ms
        for (method, _), row in rows.items()
        if method == "entropy"
        for ms in row.get("drpaiq", {}).get("search_ms", [])
    ]
    if real:
        print(
            f"entropy search per tensor, both sides ({args.model.name}): median "
            f"{statistics.median(real):.1f} ms, max {max(real):.1f} ms over {len(real)} tensors"
        )

    print("targets (issue 4):")
    largest, smallest = max(args.sizes), min(args.sizes)

    def peak(method: str, count: int) -> float | None:
        return rows.get((method, count), {}).get("drpaiq", {}).get("peak_mb")

    def verdict(value: float | None, limit: float) -> str:
        if value is None:
            return "not measured"
        return f"{value:.2f}x (<= {limit}x) {'ok' if value <= limit else 'MISSED'}"

    for method in ("entropy", "percentile"):
        a, b = peak(method, largest), peak(method, smallest)
        print(
            f"  {method} peak RSS N={largest} / N={smallest}: "
            + verdict(a / b if a and b else None, 1.15)
        )
    a, b = peak("entropy", largest), peak("minmax", largest)
    ratio = a / b if a and b else None
    print(f"  entropy / minmax peak RSS at N={largest}: " + verdict(ratio, 1.3))
    for method, limit in (("minmax", 1.25), ("entropy", 1.5), ("percentile", 1.5)):
        for count in args.sizes:
            calib = rows.get((method, count), {}).get("drpaiq", {}).get("calibrate_s")
            base = fp32[count]
            value = calib / base["read_run_s"] if calib else None
            strict = calib / base["fp32_s"] if calib else None
            best = calib / base["best_s"] if calib else None
            print(
                f"  {method} calibration / FP32 run over the images at N={count}: "
                + verdict(value, limit)
                + (
                    f"  [strict, vs inference on decoded images: {strict:.2f}x; "
                    f"{best:.2f}x its best configuration]"
                    if strict and best
                    else ""
                )
            )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
