"""drpaiq vs ONNX Runtime's quantize_static on the shipped samples, in one run.

For each sample model and calibration method it quantizes with drpaiq and with
ONNX Runtime (QDQ, per-channel, QInt8 activations and weights, the same method and
the same calibration images), then prints one table: FP32 top-1, each INT8 top-1, how
far each INT8 model's outputs are from FP32's, each quantize wall time, and each INT8
model's ONNX Runtime CPU inference time.

    python bench/bench_quantize.py                 # MinMax and Entropy on modA and modB
    python bench/bench_quantize.py --methods MinMax --test-limit 500
    python bench/bench_quantize.py --test-set shipped
    python bench/bench_quantize.py --test-set fashion-mnist-train   # 60,000 more images

Test images: with ``--test-set auto`` (the default) the whole Fashion-MNIST test split
(10,000 images) when Debian's ``dataset-fashion-mnist`` is installed, else the 2,000
shipped PNGs (``samples/data/test``). One image is 0.05 points on 2,000 images and 0.01
on 10,000; the samples lose so little that the larger set is needed to tell the two
quantizers apart. The split is prepared exactly as the shipped PNGs were (padded to
32x32, gray to RGB, the model's normalization), and the bench checks that on the
shipped images its arrays equal what the drpaiq reader makes of the PNGs.

``--test-set fashion-mnist-train`` evaluates on the 60,000 training images instead. The
models were trained on them (top-1 is higher than on the test split, and the 200
calibration images are among them), so they say nothing about accuracy on new data, but
six times as many images compare the two quantizers with six times the precision.

Besides top-1, the table gives each INT8 model's flips: test images whose INT8 top-1
class differs from the FP32 model's (how closely the INT8 model follows FP32), and the
paired comparison of the two INT8 models: the images only drpaiq's model classifies
right, those only ONNX Runtime's does, and the exact two-sided McNemar p-value of that
split (a small p means the difference in top-1 is more than chance on these images),
and each INT8 model's KL: the mean KL divergence of its class probabilities (softmax of
the outputs) from the FP32 model's, in 1e-4 nats. Top-1 moves only when an image's class
changes, a few dozen images here, so two close INT8 models differ in it by chance; the KL
counts every image and shows which one follows FP32 more closely (the targets' lines
give the difference with a 95% paired bootstrap interval).

Targets (issue 3): drpaiq's top-1 drop <= ONNX Runtime's and <= 0.5 points on each
sample; drpaiq INT8 inference time <= 1.1x ONNX Runtime's INT8 model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@dataclass(frozen=True)
class Sample:
    name: str
    model: Path
    reader: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def samples() -> list[Sample]:
    metrics = json.loads((SAMPLES / "metrics.json").read_text())
    found = []
    for key, reader in (("modA", "nchw_image"), ("modB", "nhwc_image")):
        entry = metrics["models"][key]
        norm = entry["normalization"]
        found.append(
            Sample(key, SAMPLES / entry["file"], reader, tuple(norm["mean"]), tuple(norm["std"]))
        )
    return found


def open_reader(sample: Sample, dataset: Path, labeled: bool, batch: int, limit: int = 0):  # type: ignore[no-untyped-def]
    import onnx
    from drpaiq_core.load import model_inputs
    from drpaiq_core.plugin_api import ReaderContext
    from drpaiq_core.plugins import get_plugin_host

    model = onnx.load(str(sample.model))
    context = ReaderContext(
        dataset=dataset,
        model_path=sample.model,
        inputs=model_inputs(model),
        norm_mean=sample.mean,
        norm_std=sample.std,
        size_limit=limit,
        batch_size=batch,
        labeled=labeled,
    )
    return get_plugin_host().readers.get(sample.reader)(context)


def load_test_set(sample: Sample, limit: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    reader = open_reader(sample, SAMPLES / "data" / "test", labeled=True, batch=1, limit=limit)
    feeds, labels = [], []
    for batch in reader.batches():
        feeds.append(batch.feeds)
        labels.append(batch.labels)
    return feeds, np.concatenate(labels)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An array from a gzipped IDX file (the MNIST format: magic, dimensions, uint8 data)."""
    import gzip

    data = gzip.decompress(path.read_bytes())
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def fashion_mnist_inputs(sample: Sample, images: np.ndarray) -> np.ndarray:
    """The model inputs for 28x28 gray images, prepared as the shipped PNGs were made
    and as the image readers read them: 2 px of 0 around, gray copied to R, G and B,
    scaled to [0, 1], then (x - mean) / std in float32, in the model's layout."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    rgb = np.repeat(padded[..., None], 3, axis=3).astype(np.float32) / np.float32(255.0)
    out = (rgb - np.asarray(sample.mean, dtype=np.float32)) / np.asarray(
        sample.std, dtype=np.float32
    )
    if sample.reader == "nchw_image":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_fashion_mnist_train(
    sample: Sample, limit: int
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The 60,000 Fashion-MNIST training images as one-image feeds, prepared as the test
    split (whose preparation :func:`load_fashion_mnist_test` checks against the reader)."""
    import onnx
    from drpaiq_core.load import model_inputs

    labels = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    count = len(labels) if limit <= 0 else min(limit, len(labels))
    images = read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")[:count]
    inputs = fashion_mnist_inputs(sample, images)
    (input_spec,) = model_inputs(onnx.load(str(sample.model)))
    return [{input_spec.name: inputs[i : i + 1]} for i in range(count)], labels[:count]


def load_fashion_mnist_test(
    sample: Sample, limit: int
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The whole Fashion-MNIST test split as one-image feeds, after checking that every
    shipped test PNG (file name = index in the split) gives the reader exactly the same
    array."""
    import onnx
    from drpaiq_core.load import model_inputs

    images = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    inputs = fashion_mnist_inputs(sample, images)
    reader = open_reader(sample, SAMPLES / "data" / "test", labeled=True, batch=1)
    for batch in reader.batches():
        png = Path(batch.sources[0])
        if not np.array_equal(inputs[int(png.stem)], next(iter(batch.feeds.values()))[0]):
            raise RuntimeError(
                f"the Fashion-MNIST test split, prepared for {sample.name}, differs from "
                f"what the reader makes of {png}; use --test-set shipped"
            )
    (input_spec,) = model_inputs(onnx.load(str(sample.model)))
    count = len(labels) if limit <= 0 else min(limit, len(labels))
    return [{input_spec.name: inputs[i : i + 1]} for i in range(count)], labels[:count]


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


#: The KL column's unit: 1e-4 nats.
KL_UNIT = 1e4

#: Inference time is measured on at most this many of the feeds.
TIMED_FEEDS = 10_000


def outputs_and_time(
    path: Path, feeds: list[dict[str, np.ndarray]], passes: int = 3
) -> tuple[np.ndarray, float]:
    """The first output (the class scores) of every feed, one row per feed, and the best
    of ``passes`` passes' inference time per image (ms) over the first
    :data:`TIMED_FEEDS` feeds, one image per run."""
    sess = session(path)
    scores = np.concatenate(
        [np.asarray(sess.run(None, f)[0], np.float64).reshape(1, -1) for f in feeds]
    )
    timed = feeds[:TIMED_FEEDS]
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for feed in timed:
            sess.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return scores, 1000.0 * best / max(len(timed), 1)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of class scores (the samples output logits)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def image_kl(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per image, KL(softmax(reference) || softmax(scores)) in nats: how far the INT8
    model's class probabilities are from the FP32 model's. Unlike top-1 it counts every
    image, not only the few whose class changes, so it tells two close quantized models
    apart where top-1 differs by chance."""
    log_p, log_q = log_softmax(reference), log_softmax(scores)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=1)


def paired_interval(
    differences: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-image differences (seeded: the same
    numbers give the same interval)."""
    rng = np.random.default_rng(seed)
    means = [
        float(differences[rng.integers(0, len(differences), len(differences))].mean())
        for _ in range(resamples)
    ]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def quantize_drpaiq(
    sample: Sample, method: str, out: Path, options: dict[str, str] | None = None
) -> float:
    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.pipeline import quantize

    start = time.perf_counter()
    quantize(
        QuantizeConfig(
            input_model=sample.model,
            output_model=out,
            reader=sample.reader,
            calibrate_dataset=SAMPLES / "data" / "calibrate",
            calibrate_method=method,
            norm_mean=sample.mean,
            norm_std=sample.std,
            quiet=True,
            options=dict(options or {}),
        )
    )
    return time.perf_counter() - start


def quantize_ort(sample: Sample, method: str, out: Path, workdir: Path) -> float:
    """Quantize a sample with ONNX Runtime (see ``ort_baseline``) on the calibration
    images; the wall time (s)."""
    from ort_baseline import ort_quantize_static

    reader = open_reader(sample, SAMPLES / "data" / "calibrate", labeled=False, batch=1)
    feeds = (batch.feeds for batch in reader.batches())
    return ort_quantize_static(sample.model, out, feeds, method, workdir)


def main() -> int:
    from drpaiq_core.evaluate import mcnemar_p
    from ort_baseline import stand_in_note

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="MinMax,Entropy")
    parser.add_argument("--test-limit", type=int, default=0, help="test images per model (0 = all)")
    parser.add_argument(
        "--test-set",
        choices=("auto", "shipped", "fashion-mnist", "fashion-mnist-train"),
        default="auto",
        help="the 10,000-image Fashion-MNIST test split (auto: when installed), the "
        "2,000 shipped PNGs, or the 60,000 training images (not held out: for comparing "
        "the two quantizers on more images)",
    )
    parser.add_argument(
        "--bias-correction",
        action="store_true",
        help="quantize with drpaiq's advanced option bias_correction True",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an advanced option for drpaiq (repeatable), e.g. --option num_bins=4096",
    )
    args = parser.parse_args()
    if any("=" not in item for item in args.option):
        parser.error("--option takes KEY=VALUE")
    options = dict(item.split("=", 1) for item in args.option)
    if args.bias_correction:
        options["bias_correction"] = "True"
    logging.getLogger("drpaiq").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)
    train = args.test_set == "fashion-mnist-train"
    full = args.test_set == "fashion-mnist" or (
        args.test_set == "auto" and (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file()
    )

    header = (
        f"{'model':6} {'method':8} {'FP32 top1':>9} {'drpaiq':>7} {'ORT':>7} "
        f"{'drop d/o':>11} {'flips d/o':>9} {'only d/o':>9} {'p':>5} {'KL d/o':>11} "
        f"{'quant s d/o':>13} "
        f"{'infer ms d/o':>15} {'ratio':>6}"
    )
    verdicts: list[str] = []
    rows = [header, "-" * len(header)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # One untimed run of each tool first, so that neither pays for imports.
        first = samples()[0]
        quantize_drpaiq(first, "MinMax", workdir / "warmup_drpaiq.onnx")
        quantize_ort(first, "MinMax", workdir / "warmup_ort.onnx", workdir)
        for sample in samples():
            if train:
                feeds, labels = load_fashion_mnist_train(sample, args.test_limit)
            elif full:
                feeds, labels = load_fashion_mnist_test(sample, args.test_limit)
            else:
                feeds, labels = load_test_set(sample, args.test_limit)
            fp32_scores, _ = outputs_and_time(sample.model, feeds, passes=0)
            fp32_pred = np.argmax(fp32_scores, axis=1)
            fp32_top1 = 100.0 * float(np.mean(fp32_pred == labels))
            for method in args.methods.split(","):
                ours = workdir / f"{sample.name}_{method}_drpaiq.onnx"
                theirs = workdir / f"{sample.name}_{method}_ort.onnx"
                t_ours = quantize_drpaiq(sample, method, ours, options)
                t_theirs = quantize_ort(sample, method, theirs, workdir)
                scores_ours, ms_ours = outputs_and_time(ours, feeds)
                scores_theirs, ms_theirs = outputs_and_time(theirs, feeds)
                pred_ours, pred_theirs = scores_ours.argmax(axis=1), scores_theirs.argmax(axis=1)
                image_ours = KL_UNIT * image_kl(fp32_scores, scores_ours)
                image_theirs = KL_UNIT * image_kl(fp32_scores, scores_theirs)
                kl_ours, kl_theirs = float(image_ours.mean()), float(image_theirs.mean())
                kl_low, kl_high = paired_interval(image_ours - image_theirs)
                top_ours = 100.0 * float(np.mean(pred_ours == labels))
                top_theirs = 100.0 * float(np.mean(pred_theirs == labels))
                flips_ours = int(np.sum(pred_ours != fp32_pred))
                flips_theirs = int(np.sum(pred_theirs != fp32_pred))
                only_ours = int(np.sum((pred_ours == labels) & (pred_theirs != labels)))
                only_theirs = int(np.sum((pred_theirs == labels) & (pred_ours != labels)))
                p_value = mcnemar_p(only_ours, only_theirs)
                drop_ours, drop_theirs = fp32_top1 - top_ours, fp32_top1 - top_theirs
                verdicts.append(
                    verdict(sample.name, method, drop_ours, drop_theirs, ms_ours / ms_theirs)
                    + f" (paired: {only_ours} vs {only_theirs} images right for one model "
                    f"only, McNemar p={p_value:.2f}; KL drpaiq - ORT {kl_ours - kl_theirs:+.2f}, "
                    f"95% interval {kl_low:+.2f} to {kl_high:+.2f})"
                )
                rows.append(
                    f"{sample.name:6} {method:8} {fp32_top1:9.2f} "
                    f"{top_ours:7.2f} {top_theirs:7.2f} "
                    f"{fp32_top1 - top_ours:5.2f}/{fp32_top1 - top_theirs:5.2f} "
                    f"{flips_ours:4d}/{flips_theirs:4d} "
                    f"{only_ours:4d}/{only_theirs:4d} {p_value:5.2f} "
                    f"{kl_ours:5.2f}/{kl_theirs:5.2f} "
                    f"{t_ours:6.2f}/{t_theirs:6.2f} {ms_ours:7.3f}/{ms_theirs:7.3f} "
                    f"{ms_ours / ms_theirs:6.2f}"
                )
                print(rows[-1], file=sys.stderr)
            fp32_size, int8_size = sample.model.stat().st_size, ours.stat().st_size
            rows.append(
                f"{'':6} sizes: FP32 {fp32_size:,} B, drpaiq INT8 {int8_size:,} B "
                f"({int8_size / fp32_size:.2f}x)"
            )
    if train:
        source = "the Fashion-MNIST training split (the models' training data, not held out)"
    elif full:
        source = "the Fashion-MNIST test split (Debian dataset-fashion-mnist)"
    else:
        source = "samples/data/test"
    print(
        f"images per model: {len(labels)} from {source}; calibration images: "
        "samples/data/calibrate; flips: images whose INT8 top-1 differs from FP32's; "
        "KL: mean KL divergence of the INT8 class probabilities from FP32's, in 1e-4 nats"
        + (
            "; drpaiq with " + ", ".join(f"{k} {v}" for k, v in sorted(options.items()))
            if options
            else ""
        )
    )
    print("\n".join(rows))
    note = stand_in_note(args.methods.split(","))
    if note:
        print(note)
    print("targets (issue 3):")
    print("\n".join(verdicts))
    return 0


def verdict(model: str, method: str, drop_ours: float, drop_theirs: float, ratio: float) -> str:
    """One line: does this row meet the accuracy and inference-time targets?"""
    checks = [
        ("drop <= ORT's", drop_ours <= drop_theirs + 1e-9),
        ("drop <= 0.5", drop_ours <= 0.5),
        ("infer <= 1.1x ORT", ratio <= 1.1),
    ]
    text = ", ".join(f"{name} {'ok' if good else 'MISSED'}" for name, good in checks)
    return f"  {model} {method}: {text}"


if __name__ == "__main__":
    from drpaiq_core.errors import UserError

    try:
        sys.exit(main())
    except UserError as exc:  # e.g. an unknown --option: one line, as drpaiq prints it
        sys.exit(f"bench_quantize.py: error: {exc}")
