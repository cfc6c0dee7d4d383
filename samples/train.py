#!/usr/bin/env python3
"""Train and export the drpaiq sample models and sample data.

Data source: Fashion-MNIST (Zalando Research, MIT license) as shipped by the
Debian package ``dataset-fashion-mnist`` (idx files, optionally gzipped, in
``/usr/share/datasets/fashion-mnist``).  Install it with
``apt-get install dataset-fashion-mnist``.

Every 28x28 gray image is turned into a 32x32 RGB image by padding 2 pixels of
value 0 on each side and replicating the gray plane into 3 channels.

Outputs (under ``--out``, default ``samples``):

* ``modA_resnet_nchw.onnx``  small pre-activation ResNet, input "input" [N,3,32,32]
  (NCHW, PyTorch style), normalization (x/255 - 0.2860) / 0.3530 per channel.
* ``modB_resnet_nhwc.onnx``  Keras/tf2onnx-shaped net, input "input_1" [N,32,32,3]
  (NHWC; Transpose first), ReLU6 as Clip, Concat, residual Add, MatMul+Add dense
  layers; normalization x/255.
* ``data/calibrate/``  200 training-split PNGs (20 per class), ``NNNNN_cK.png``.
* ``data/test/<k_name>/``  2,000 test-split PNGs (200 per class).
* ``metrics.json``  FP32 top-1 (onnxruntime) on the full 10k test split and on
  the 2,000-image folder, seed, hyper-parameters, normalization, versions.

Training needs torch (see ``requirements-train.txt``); torch is NOT a runtime
dependency of drpaiq.  Re-run with ``python samples/train.py``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

CLASS_DIRS = [
    "0_tshirt_top",
    "1_trouser",
    "2_pullover",
    "3_dress",
    "4_coat",
    "5_sandal",
    "6_shirt",
    "7_sneaker",
    "8_bag",
    "9_ankle_boot",
]

NORM = {
    "modA": {"mean": [0.2860, 0.2860, 0.2860], "std": [0.3530, 0.3530, 0.3530]},
    "modB": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
}

MODEL_FILES = {
    "modA": "modA_resnet_nchw.onnx",
    "modB": "modB_resnet_nhwc.onnx",
}

OPSET = 12


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def _open_idx(data_dir: Path, name: str) -> bytes:
    for candidate in (data_dir / name, data_dir / (name + ".gz")):
        if candidate.exists():
            if candidate.suffix == ".gz":
                with gzip.open(candidate, "rb") as f:
                    return f.read()
            return candidate.read_bytes()
    raise FileNotFoundError(
        f"{name}[.gz] not found in {data_dir}; install the Debian package "
        "'dataset-fashion-mnist' or pass --data-dir")


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse an idx file (big-endian header: 0, 0, dtype code, ndim, dims)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("not an idx file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
              0x0D: ">f4", 0x0E: ">f8"}
    dtype = np.dtype(dtypes[raw[2]])
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError("idx size mismatch")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


def load_split(data_dir: Path, kind: str):
    """Return (images uint8 [n,28,28], labels int64 [n], sha256 of raw bytes)."""
    prefix = "train" if kind == "train" else "t10k"
    img_raw = _open_idx(data_dir, f"{prefix}-images-idx3-ubyte")
    lbl_raw = _open_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    images = parse_idx(img_raw)
    labels = parse_idx(lbl_raw).astype(np.int64)
    assert images.shape[1:] == (28, 28) and images.shape[0] == labels.shape[0]
    digest = {
        "images_sha256": hashlib.sha256(img_raw).hexdigest(),
        "labels_sha256": hashlib.sha256(lbl_raw).hexdigest(),
    }
    return images, labels, digest


def to_rgb32(images28: np.ndarray) -> np.ndarray:
    """uint8 [n,28,28] -> uint8 [n,32,32,3]: zero-pad 2 px, replicate gray."""
    padded = np.pad(images28, ((0, 0), (2, 2), (2, 2)), mode="constant",
                    constant_values=0)
    return np.repeat(padded[..., None], 3, axis=-1)


def normalize_nhwc(rgb_u8: np.ndarray, model: str) -> np.ndarray:
    """uint8 [n,32,32,3] -> float32 NHWC: (x/255 - mean) / std per channel."""
    mean = np.asarray(NORM[model]["mean"], dtype=np.float32)
    std = np.asarray(NORM[model]["std"], dtype=np.float32)
    return ((rgb_u8.astype(np.float32) / np.float32(255.0)) - mean) / std


def model_input(rgb_u8: np.ndarray, model: str) -> np.ndarray:
    x = normalize_nhwc(rgb_u8, model)
    if model == "modA":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def select_per_class(labels: np.ndarray, per_class: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Pick `per_class` indices of every class (sorted by class, then index)."""
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        pick = np.sort(rng.choice(idx, size=per_class, replace=False))
        chosen.append(pick)
    return np.concatenate(chosen)


def _clear_pngs(folder: Path) -> None:
    if folder.exists():
        for p in sorted(folder.rglob("*.png")):
            p.unlink()
        for d in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
    folder.mkdir(parents=True, exist_ok=True)


def write_data_folders(out: Path, train_x, train_y, test_x, test_y, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    # calibration: 20 per class from the TRAINING split, shuffled order so
    # that taking the first k files gives a class mix.
    cal_idx = select_per_class(train_y, 20, rng)
    cal_idx = cal_idx[rng.permutation(len(cal_idx))]
    cal_dir = out / "data" / "calibrate"
    _clear_pngs(cal_dir)
    cal_rgb = to_rgb32(train_x[cal_idx])
    for i, (src, img) in enumerate(zip(cal_idx, cal_rgb)):
        Image.fromarray(img, mode="RGB").save(
            cal_dir / f"{i:05d}_c{int(train_y[src])}.png", optimize=False)

    # labeled test folder: 200 per class from the TEST split.
    test_idx = select_per_class(test_y, 200, rng)
    test_dir = out / "data" / "test"
    _clear_pngs(test_dir)
    for name in CLASS_DIRS:
        (test_dir / name).mkdir(parents=True, exist_ok=True)
    test_rgb = to_rgb32(test_x[test_idx])
    for src, img in zip(test_idx, test_rgb):
        label = int(test_y[src])
        Image.fromarray(img, mode="RGB").save(
            test_dir / CLASS_DIRS[label] / f"{int(src):05d}.png", optimize=False)

    def _digest(a):
        return hashlib.sha256(np.asarray(a, dtype=np.int64).tobytes()).hexdigest()

    return {
        "calibrate": {"dir": "data/calibrate", "split": "train", "count": int(len(cal_idx)),
                      "per_class": 20,
                      "name_pattern": "{order:05d}_c{label}.png",
                      "source_indices_sha256": _digest(cal_idx)},
        "test": {"dir": "data/test", "split": "test", "count": int(len(test_idx)),
                 "per_class": 200, "class_dirs": CLASS_DIRS,
                 "name_pattern": "{class_dir}/{test_split_index:05d}.png",
                 "source_indices_sha256": _digest(test_idx)},
    }


def read_test_folder(test_dir: Path):
    """Read the labeled PNG folder back with Pillow -> (uint8 NHWC, labels)."""
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(sorted(p.name for p in test_dir.iterdir() if p.is_dir())):
        for f in sorted((test_dir / name).glob("*.png")):
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------
# Models (torch imported lazily so --help works without torch)
# --------------------------------------------------------------------------

def build_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class PreActBlock(nn.Module):
        """BN-ReLU-Conv-BN-ReLU-Conv + shortcut.  The first BN follows a
        MaxPool/Add, so the ONNX exporter cannot fold it into a Conv."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

        def forward(self, x):
            out = F.relu(self.bn1(x))
            sc = x if self.shortcut is None else self.shortcut(out)
            out = self.conv1(out)
            out = self.conv2(F.relu(self.bn2(out)))
            return out + sc

    class ModA(nn.Module):
        """Small pre-activation ResNet, NCHW [N,3,32,32] -> logits [N,10]."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.stem_conv = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
            self.stem_bn = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2)                     # 32 -> 16
            self.layer1 = PreActBlock(32, 32, 1)            # 16x16
            self.layer2 = PreActBlock(32, 64, 2)            # 8x8
            self.layer3 = PreActBlock(64, 128, 2)           # 4x4
            self.bn_final = nn.BatchNorm2d(128)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(128, num_classes)

        def forward(self, x):
            x = self.pool(F.relu(self.stem_bn(self.stem_conv(x))))
            x = self.layer3(self.layer2(self.layer1(x)))
            x = F.relu(self.bn_final(x))
            x = torch.flatten(self.gap(x), 1)
            return self.fc(x)

    class ConvBNReLU6(nn.Module):
        """Conv(+BN folded at export) + ReLU6 (exported as Clip(0,6))."""

        def __init__(self, cin, cout, k, stride=1, act=True):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=True)
            self.bn = nn.BatchNorm2d(cout)
            self.act = act

        def forward(self, x):
            x = self.bn(self.conv(x))
            return torch.clamp(x, 0.0, 6.0) if self.act else x

    class Dense(nn.Module):
        """Keras-style Dense: x @ W + b  (exports as MatMul + Add)."""

        def __init__(self, cin, cout):
            super().__init__()
            bound = 1.0 / (cin ** 0.5)
            self.w = nn.Parameter(torch.empty(cin, cout).uniform_(-bound, bound))
            self.b = nn.Parameter(torch.zeros(cout))

        def forward(self, x):
            return x @ self.w + self.b

    class ModB(nn.Module):
        """Keras/tf2onnx-shaped net, NHWC [N,32,32,3] -> logits [N,10]."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = ConvBNReLU6(3, 24, 3)                  # 32x32
            self.down1 = ConvBNReLU6(24, 32, 3, 2)             # 16x16
            self.branch_a = ConvBNReLU6(32, 32, 1)             # inception-like
            self.branch_b = ConvBNReLU6(32, 32, 3)
            self.project = ConvBNReLU6(64, 32, 1, act=False)
            self.down2 = ConvBNReLU6(32, 64, 3, 2)             # 8x8
            self.res1 = ConvBNReLU6(64, 64, 3)
            self.res2 = ConvBNReLU6(64, 64, 3, act=False)
            self.down3 = ConvBNReLU6(64, 128, 3, 2)            # 4x4
            self.dense1 = Dense(128, 64)
            self.dense2 = Dense(64, num_classes)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2)                          # NHWC -> NCHW
            x = self.down1(self.stem(x))
            y = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
            x = torch.clamp(self.project(y) + x, 0.0, 6.0)
            x = self.down2(x)
            x = torch.clamp(self.res2(self.res1(x)) + x, 0.0, 6.0)
            x = self.down3(x)
            x = torch.mean(x, dim=(2, 3))                      # global average pooling
            x = torch.relu(self.dense1(x))
            return self.dense2(x)

    return ModA, ModB


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def augment_batch(torch, xb_u8, gen, shift: int, flip: bool):
    """xb_u8: uint8 [B,32,32] (padded gray).  Random translation by up to
    `shift` px (zero fill) and random horizontal flip."""
    B = xb_u8.shape[0]
    if shift > 0:
        padded = torch.nn.functional.pad(xb_u8, (shift, shift, shift, shift))
        oy = torch.randint(0, 2 * shift + 1, (B,), generator=gen)
        ox = torch.randint(0, 2 * shift + 1, (B,), generator=gen)
        ar = torch.arange(32)
        rows = (oy[:, None] + ar)[:, :, None]
        cols = (ox[:, None] + ar)[:, None, :]
        xb_u8 = padded[torch.arange(B)[:, None, None], rows, cols]
    if flip:
        mask = torch.rand(B, generator=gen) < 0.5
        xb_u8 = torch.where(mask[:, None, None], xb_u8.flip(-1), xb_u8)
    return xb_u8


def to_tensor_input(torch, gray32_u8, model: str):
    """uint8 [B,32,32] gray -> normalized float input in the model's layout."""
    mean = NORM[model]["mean"][0]
    std = NORM[model]["std"][0]
    x = (gray32_u8.float() / 255.0 - mean) / std
    if model == "modA":
        return x[:, None, :, :].expand(-1, 3, -1, -1).contiguous()   # NCHW
    return x[:, :, :, None].expand(-1, -1, -1, 3).contiguous()       # NHWC


def train_model(name, model, train_gray32, train_y, args, log):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(args.seed + (0 if name == "modA" else 1))
    n = train_gray32.shape[0]
    steps_per_epoch = n // args.batch_size          # drop last partial batch
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=total, pct_start=0.25,
        div_factor=10.0, final_div_factor=100.0)
    x_all = torch.from_numpy(train_gray32)
    y_all = torch.from_numpy(train_y)
    model.train()
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=gen)
        run_loss, run_correct, seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            xb = augment_batch(torch, x_all[idx], gen, args.shift, not args.no_flip)
            xb = to_tensor_input(torch, xb, name)
            yb = y_all[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item() * len(idx)
            run_correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        log(f"[{name}] epoch {epoch + 1}/{args.epochs} loss {run_loss / seen:.4f} "
            f"train-acc {100.0 * run_correct / seen:.2f}% ({time.time() - t0:.0f}s)")
    model.eval()
    return time.time() - t0


def constants_to_initializers(m) -> None:
    """Move tensor-valued Constant nodes (e.g. Clip min/max) into graph
    initializers, like tf2onnx/Keras exports store them."""
    from onnx import numpy_helper

    keep = []
    for node in m.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            arr = numpy_helper.to_array(node.attribute[0].t)
            m.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)


def export_onnx(name, model, path: Path, log):
    import torch
    import onnx

    if name == "modA":
        dummy = torch.zeros(1, 3, 32, 32)
        in_name = "input"
    else:
        dummy = torch.zeros(1, 32, 32, 3)
        in_name = "input_1"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript-based exporter (dynamo=False) writes opset 12 directly.
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
        input_names=[in_name], output_names=["logits"],
        dynamic_axes={in_name: {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True, export_params=True,
        training=torch.onnx.TrainingMode.EVAL)
    m = onnx.load(str(path))
    constants_to_initializers(m)
    m.producer_name = "drpaiq-samples-train"
    m.doc_string = (f"drpaiq sample {name}: Fashion-MNIST (Zalando Research, MIT) "
                    f"32x32 RGB, see samples/README.md")
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    ops = sorted({n.op_type for n in m.graph.node})
    log(f"[{name}] exported {path} ({path.stat().st_size} bytes, opset "
        f"{m.opset_import[0].version}); ops: {ops}")
    return m


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_top1(sess, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    in_name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        logits = sess.run(["logits"], {in_name: x[i:i + batch]})[0]
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def torch_top1(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    import torch

    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[i:i + batch]))
            correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def describe_model(m, path: Path):
    def shape(vi):
        return [d.dim_param if d.dim_param else d.dim_value
                for d in vi.type.tensor_type.shape.dim]

    n_params = int(sum(np.prod(t.dims) for t in m.graph.initializer))
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "opset": int(m.opset_import[0].version),
        "inputs": {vi.name: shape(vi) for vi in m.graph.input},
        "outputs": {vi.name: shape(vi) for vi in m.graph.output},
        "op_types": sorted({n.op_type for n in m.graph.node}),
        "num_nodes": len(m.graph.node),
        "num_initializer_values": n_params,
    }


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train and export the drpaiq sample ONNX models (modA NCHW ResNet, "
                    "modB NHWC Keras-style) and write the sample data folders. "
                    "Data: Fashion-MNIST (Zalando Research, MIT license) from the Debian "
                    "package 'dataset-fashion-mnist' (idx files in "
                    f"{DEFAULT_DATA_DIR}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent),
                   help="output folder (the repository's samples/ folder)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="folder with the Fashion-MNIST idx files (Debian dataset-fashion-mnist)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, one-cycle)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--shift", type=int, default=2, help="max random translation (px) for augmentation")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flip")
    p.add_argument("--train-subset", type=int, default=0,
                   help="use only this many training images (0 = all 60,000)")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime intra-op threads")
    p.add_argument("--models", default="modA,modB", help="comma-separated subset of modA,modB")
    p.add_argument("--no-data", action="store_true", help="do not (re)write data/ folders")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    import torch
    import onnx
    import onnxruntime
    import PIL

    # ---- determinism ----------------------------------------------------
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

    data_dir = Path(args.data_dir)
    train_x, train_y, train_digest = load_split(data_dir, "train")
    test_x, test_y, test_digest = load_split(data_dir, "test")
    log(f"loaded Fashion-MNIST from {data_dir}: train {train_x.shape}, test {test_x.shape}")

    # training subset (deterministic by seed)
    sub_idx = np.arange(len(train_y))
    if args.train_subset and args.train_subset < len(train_y):
        sub_idx = np.sort(np.random.default_rng(args.seed + 7).choice(
            len(train_y), args.train_subset, replace=False))
    train_gray32 = np.ascontiguousarray(
        np.pad(train_x[sub_idx], ((0, 0), (2, 2), (2, 2))))
    train_lab = np.ascontiguousarray(train_y[sub_idx])

    # ---- data folders ---------------------------------------------------
    metrics_path = out / "metrics.json"
    old = {}
    if metrics_path.exists():
        try:
            old = json.loads(metrics_path.read_text())
        except ValueError:
            old = {}
    if args.no_data:
        data_info = old.get("data")
    else:
        data_info = write_data_folders(out, train_x, train_y, test_x, test_y, args.seed)
        log(f"wrote {data_info['calibrate']['count']} calibration PNGs and "
            f"{data_info['test']['count']} labeled test PNGs under {out / 'data'}")

    test_rgb = to_rgb32(test_x)
    folder_x, folder_y = read_test_folder(out / "data" / "test")

    ModA, ModB = build_models()
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    results = dict(old.get("models", {}))
    for name in ("modA", "modB"):
        if name not in wanted:
            continue
        torch.manual_seed(args.seed + (0 if name == "modA" else 1))
        model = (ModA if name == "modA" else ModB)()
        n_params = sum(p.numel() for p in model.parameters())
        log(f"[{name}] {n_params} trainable parameters")
        train_seconds = train_model(name, model, train_gray32, train_lab, args, log)

        path = out / MODEL_FILES[name]
        m = export_onnx(name, model, path, log)
        sess = ort_session(path, args.threads)

        x10k = model_input(test_rgb, name)
        acc_torch = torch_top1(model, x10k, test_y)
        acc_10k = ort_top1(sess, x10k, test_y)
        acc_2k = ort_top1(sess, model_input(folder_x, name), folder_y)
        # dynamic batch sanity check (1 and 8)
        in_name = sess.get_inputs()[0].name
        for bs in (1, 8):
            o = sess.run(["logits"], {in_name: x10k[:bs]})[0]
            assert o.shape == (bs, 10), o.shape
        log(f"[{name}] FP32 top-1 (onnxruntime): full 10k test split {acc_10k:.2f}% "
            f"(torch {acc_torch:.2f}%), 2,000-image folder {acc_2k:.2f}%")

        info = describe_model(m, path)
        info.update({
            "layout": "NCHW" if name == "modA" else "NHWC",
            "normalization": {**NORM[name], "formula": "(pixel/255 - mean) / std per channel",
                              "channel_order": "RGB (gray replicated)"},
            "trainable_parameters": int(n_params),
            "fp32_top1_test10k_onnxruntime": round(acc_10k, 2),
            "fp32_top1_test10k_torch": round(acc_torch, 2),
            "fp32_top1_data_test_folder_2000": round(acc_2k, 2),
            "train_seconds": round(train_seconds, 1),
        })
        results[name] = info

    metrics = {
        "dataset": {
            "name": "Fashion-MNIST",
            "author": "Zalando Research",
            "license": "MIT",
            "source": f"Debian package dataset-fashion-mnist ({data_dir})",
            "preprocessing": "28x28 gray -> zero-pad 2 px each side -> 32x32, gray replicated to RGB",
            "train": train_digest, "test": test_digest,
            "class_names": CLASS_DIRS,
        },
        "data": data_info,
        "seed": args.seed,
        "hyperparameters": {
            "epochs": args.epochs, "batch_size": args.batch_size,
            "optimizer": "AdamW", "lr_peak": args.lr, "lr_schedule": "OneCycle (pct_start 0.25, div 10, final_div 100)",
            "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
            "augmentation": {"random_shift_px": args.shift, "random_hflip": not args.no_flip},
            "train_images": int(len(sub_idx)), "threads": args.threads,
            "deterministic": "torch.manual_seed + torch.use_deterministic_algorithms(True)",
        },
        "models": results,
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__,
        },
        "total_seconds": round(time.time() - t_start, 1),
    }
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"wrote {metrics_path} (total {metrics['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
