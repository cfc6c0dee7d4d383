"""Small PyTorch CNNs shaped like the models drpaiq's users export, for bench_exports.py.

Each model reproduces, at toy size (64x64 input, a few thousand to a few tens of
thousands of weights), the graph patterns of one family of exported networks: YOLO's
C2f/C3/SPPF blocks, FPN and Reshape/Transpose/Sigmoid head, YOLOv5's box decoding in the
graph, DeepLab's dilated convolutions and ASPP, HRNet's multi-resolution fusion,
MobileNetV3's depthwise convolutions, squeeze-excitation and hard-swish, a Keras export's
NHWC input, a channel-pruned network, and a few less common operators. They are not
trained: :func:`build` gives them fixed random weights and BatchNorm statistics measured
on real images, so that activations have realistic, non-trivial ranges.

This module needs torch (``samples/requirements-train.txt``); drpaiq itself never does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Activation modules by the names :func:`conv_bn` accepts.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
}


def conv_bn(
    c_in: int,
    c_out: int,
    kernel: int = 3,
    stride: int = 1,
    dilation: int = 1,
    act: str | None = "silu",
    groups: int = 1,
) -> nn.Sequential:
    """Conv (no bias, "same" padding) + BatchNorm + optional activation: the basic
    block of YOLO and of most CNNs."""
    padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(
        c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False
    )
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


def conv_bn_plain(c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm without activation, as in HRNet's fusion paths."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)
    )


# -- YOLO (v5/v8 style) -----------------------------------------------------------


class Bottleneck(nn.Module):
    """Two 3x3 convolutions with an optional residual Add."""

    def __init__(self, channels: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = conv_bn(channels, channels), conv_bn(channels, channels)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """YOLOv8's C2f: split in two (Split via ``chunk``, or ``split`` with sizes as in
    YOLOv8's ``forward_split``), bottlenecks on the second half, Concat of all parts."""

    def __init__(
        self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, use_split: bool = False
    ) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.use_split = use_split
        self.cv1 = conv_bn(c_in, 2 * self.hidden, 1)
        self.cv2 = conv_bn((2 + n) * self.hidden, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_split:
            parts = list(self.cv1(x).split((self.hidden, self.hidden), 1))
        else:
            parts = list(self.cv1(x).chunk(2, 1))
        parts.extend(m(parts[-1]) for m in self.m)
        return self.cv2(torch.cat(parts, 1))


class C3(nn.Module):
    """YOLOv5's CSP block: two 1x1 branches, one through a bottleneck, concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1, self.cv2 = conv_bn(c_in, hidden, 1), conv_bn(c_in, hidden, 1)
        self.m = Bottleneck(hidden)
        self.cv3 = conv_bn(2 * hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 MaxPools, concatenated."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1, self.cv2 = conv_bn(c_in, hidden, 1), conv_bn(hidden * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class YoloLike(nn.Module):
    """Detector: C2f/C3 backbone, SPPF, FPN with nearest Upsample, and a head that
    reshapes each level to (N, anchors*H*W, 5 + classes) through Reshape, Transpose
    and Sigmoid, concatenated over the three levels."""

    classes, anchors = 3, 2

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.d1, self.c1 = conv_bn(8, 16, 3, 2), C2f(16, 16)  # 16x16
        self.d2, self.c2 = conv_bn(16, 32, 3, 2), C3(32, 32)  # 8x8
        self.d3, self.c3 = conv_bn(32, 64, 3, 2), C2f(64, 64)  # 4x4
        self.sppf = SPPF(64, 64)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.f1 = C2f(96, 32, shortcut=False, use_split=True)
        self.f2 = C2f(48, 16, shortcut=False, use_split=True)
        outputs = self.anchors * (5 + self.classes)
        self.heads = nn.ModuleList(nn.Conv2d(c, outputs, 1) for c in (16, 32, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.c1(self.d1(self.stem(x)))
        p4 = self.c2(self.d2(p3))
        p5 = self.sppf(self.c3(self.d3(p4)))
        n4 = self.f1(torch.cat([self.up(p5), p4], 1))
        n3 = self.f2(torch.cat([self.up(n4), p3], 1))
        levels = []
        for conv, feature in zip(self.heads, (n3, n4, p5)):
            y = conv(feature)
            batch, _, height, width = y.shape
            y = y.view(batch, self.anchors, 5 + self.classes, height, width)
            y = y.permute(0, 1, 3, 4, 2).contiguous().sigmoid()
            levels.append(y.view(batch, -1, 5 + self.classes))
        return torch.cat(levels, 1)


class Yolo5Decode(nn.Module):
    """YOLOv5's Detect head exported with box decoding in the graph: Sigmoid, then
    xy = (2y + grid) * stride and wh = (2y)^2 * anchor_grid on Split parts, Concat."""

    outputs, anchors, stride = 8, 2, 8

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2)
        self.c2 = conv_bn(16, 32, 3, 2)
        self.c3 = conv_bn(32, 32, 3, 2)
        self.m = nn.Conv2d(32, self.anchors * self.outputs, 1)
        cells = 8
        yv, xv = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, cells, cells, 2).float() - 0.5
        anchor = torch.tensor([[10.0, 13.0], [16.0, 30.0]]).view(1, self.anchors, 1, 1, 2)
        shape = (1, self.anchors, cells, cells, 2)
        self.register_buffer("grid", grid.expand(shape).clone())
        self.register_buffer("anchor_grid", anchor.expand(shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.m(self.c3(self.c2(self.c1(x))))
        batch, _, ny, nx = x.shape
        x = x.view(batch, self.anchors, self.outputs, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        xy, wh, conf = x.sigmoid().split((2, 2, self.outputs - 4), 4)
        xy = (xy * 2 + self.grid) * self.stride
        wh = (wh * 2) ** 2 * self.anchor_grid
        return torch.cat((xy, wh, conf), 4).view(batch, self.anchors * ny * nx, self.outputs)


# -- DeepLab ------------------------------------------------------------------------


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3 and image-pooling branches
    (GlobalAveragePool, then a bilinear Resize back), concatenated and projected."""

    def __init__(self, c_in: int, c_out: int, rates: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        self.b0 = conv_bn(c_in, c_out, 1, act="relu")
        self.dilated = nn.ModuleList(conv_bn(c_in, c_out, 3, dilation=r, act="relu") for r in rates)
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )
        self.proj = conv_bn(c_out * (2 + len(rates)), c_out, 1, act="relu")
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = F.interpolate(self.pool(x), size=size, mode="bilinear", align_corners=False)
        branches = [self.b0(x), *(b(x) for b in self.dilated), pooled]
        return self.drop(self.proj(torch.cat(branches, 1)))


class DeepLabLike(nn.Module):
    """Segmenter: dilated backbone, ASPP, a decoder joining low-level features
    (bilinear Resize with align_corners=True), a final bilinear upsampling to 64x64."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.l1 = nn.Sequential(conv_bn(3, 8, 3, 2, act="relu"), conv_bn(8, 16, 3, 2, act="relu"))
        self.l2 = nn.Sequential(
            conv_bn(16, 32, 3, 2, act="relu"),
            conv_bn(32, 32, 3, dilation=2, act="relu"),
            conv_bn(32, 48, 3, dilation=4, act="relu"),
        )
        self.aspp = ASPP(48, 32)
        self.low = conv_bn(16, 8, 1, act="relu")
        self.dec = conv_bn(40, 32, 3, act="relu")
        self.cls = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = self.l1(x)
        y = self.aspp(self.l2(low))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=True)
        y = self.cls(self.dec(torch.cat([y, self.low(low)], 1)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


# -- HRNet --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions, residual Add, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = conv_bn(channels, channels, act="relu")
        self.c2 = conv_bn(channels, channels, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.c2(self.c1(x)))


class HRNetLike(nn.Module):
    """Pose model: three branches at 16x16, 8x8 and 4x4 exchanging features through
    strided convolutions and nearest upsampling, summed with Add; two outputs (the
    heatmaps and the lowest-resolution branch)."""

    def __init__(self, joints: int = 17) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, 16, 3, 2, act="relu"), conv_bn(16, 16, 3, 2, act="relu")
        )
        self.t2 = conv_bn(16, 32, 3, 2, act="relu")
        self.t3 = conv_bn(32, 64, 3, 2, act="relu")
        self.b1, self.b2, self.b3 = BasicBlock(16), BasicBlock(32), BasicBlock(64)
        self.f21, self.f31 = conv_bn_plain(32, 16), conv_bn_plain(64, 16)
        self.f12, self.f32 = conv_bn_plain(16, 32, 3, 2), conv_bn_plain(64, 32)
        self.f13 = nn.Sequential(conv_bn(16, 16, 3, 2, act="relu"), conv_bn_plain(16, 64, 3, 2))
        self.f23 = conv_bn_plain(32, 64, 3, 2)
        self.b1b, self.b2b = BasicBlock(16), BasicBlock(32)
        self.f21b = conv_bn_plain(32, 16)
        self.head = nn.Conv2d(16, joints, 1)

    @staticmethod
    def up(x: torch.Tensor, factor: int) -> torch.Tensor:
        """Nearest-neighbour upsampling by ``factor``."""
        return F.interpolate(x, scale_factor=factor, mode="nearest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.stem(x)
        x2 = self.t2(x1)
        x3 = self.t3(x2)
        x1, x2, x3 = self.b1(x1), self.b2(x2), self.b3(x3)
        y1 = F.relu(x1 + self.up(self.f21(x2), 2) + self.up(self.f31(x3), 4))
        y2 = F.relu(self.f12(x1) + x2 + self.up(self.f32(x3), 2))
        y3 = F.relu(self.f13(x1) + self.f23(x2) + x3)
        y1, y2 = self.b1b(y1), self.b2b(y2)
        z = F.relu(y1 + self.up(self.f21b(y2), 2))
        return self.head(z), y3


# -- MobileNetV3 --------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: GlobalAveragePool, two 1x1 convolutions, HardSigmoid, Mul."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(F.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNet block: 1x1 expansion, depthwise kxk, optional SE, 1x1 projection,
    residual Add when the shape allows."""

    def __init__(
        self, c_in: int, expanded: int, c_out: int, kernel: int, stride: int, se: bool, act: str
    ) -> None:
        super().__init__()
        self.residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn(c_in, expanded, 1, act=act))
        layers.append(conv_bn(expanded, expanded, kernel, stride, act=act, groups=expanded))
        if se:
            layers.append(SqueezeExcite(expanded))
        layers.append(conv_bn(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Like(nn.Module):
    """Classifier: inverted residuals with SE and hard-swish, pooled, two Gemm layers,
    Softmax."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act="hswish")
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 16, 3, 2, True, "relu"),
            InvertedResidual(16, 48, 24, 3, 2, False, "relu"),
            InvertedResidual(24, 64, 24, 3, 1, False, "relu"),
            InvertedResidual(24, 72, 40, 5, 2, True, "hswish"),
            InvertedResidual(40, 96, 40, 5, 1, True, "hswish"),
        )
        self.last = conv_bn(40, 96, 1, act="hswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.last(self.blocks(self.stem(x)))), 1)
        return torch.softmax(self.classifier(x), dim=1)


# -- Keras-style NHWC ---------------------------------------------------------------


class KerasNHWC(nn.Module):
    """Classifier with a channels-last (N, H, W, 3) input, as Keras exports are: a
    Transpose first, ReLU6 blocks with residual Adds, ReduceMean pooling, Softmax."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2, act="relu6")
        self.c2 = conv_bn(16, 16, 3, 1, act="relu6")
        self.c3 = conv_bn(16, 32, 3, 2, act="relu6")
        self.c4 = conv_bn(32, 32, 3, 1, act=None)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x.permute(0, 3, 1, 2))
        x = self.c3(x + self.c2(x))
        x = F.relu(x + self.c4(x))
        return torch.softmax(self.fc(x.mean(dim=(2, 3))), dim=-1)


# -- Edge cases ---------------------------------------------------------------------


class Pruned(nn.Module):
    """Channel-pruned network (network slimming leaves such channels until they are
    removed): two all-zero Conv filters, and two BatchNorm channels with gamma 1e-6
    (folded weights near 0, the output a constant from beta)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2, act="relu")
        self.c2 = conv_bn(16, 32, 3, 2, act="relu")
        self.c3 = conv_bn(32, 32, 3, 1, act="relu")
        self.head = nn.Conv2d(32, 10, 1)

    def finalize(self) -> None:
        """Prune, after the BatchNorm statistics are set (as pruning a trained model)."""
        with torch.no_grad():
            self.c2[0].weight[[3, 7]] = 0.0
            self.c3[1].weight[[0, 5]] = 1e-6
            self.c3[1].bias[[0, 5]] = 0.8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c3(self.c2(self.c1(x))))


class MiscOps(nn.Module):
    """Less common operators in one network: Sub/Div normalization in the graph,
    reflect and constant Pad, LeakyRelu, Clip, AveragePool, a LayerNorm written out
    (ReduceMean, Pow, Sqrt, Div), Slice, ConvTranspose and Tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.45, 0.40, 0.35]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.26, 0.27]).view(1, 3, 1, 1))
        self.c1, self.bn1 = nn.Conv2d(3, 16, 3, 2, 0), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 32, 3, 1, 0), nn.BatchNorm2d(32)
        self.pool = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(32, 32, 3, 1, 1)
        self.up, self.bn3 = nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16)
        self.up2 = nn.ConvTranspose2d(16, 3, 2, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = F.leaky_relu(self.bn1(self.c1(x)), 0.1)  # 32x32
        x = F.pad(x, (1, 1, 1, 1), mode="constant", value=0.0)
        x = self.pool(torch.clamp(self.bn2(self.c2(x)), 0.0, 6.0))  # 16x16
        centered = x - x.mean(dim=1, keepdim=True)
        x = centered / torch.sqrt(centered.pow(2).mean(dim=1, keepdim=True) + 1e-5)
        x = F.relu6(self.c3(x))[:, :, 1:-1, 1:-1]
        x = F.leaky_relu(self.bn3(self.up(F.pad(x, (1, 1, 1, 1)))), 0.2)  # 32x32
        return torch.tanh(self.up2(x))  # 64x64


class SharedHead(nn.Module):
    """RetinaNet/FCOS-style head: one Conv (the same weights) applied to two FPN
    levels of different ranges, flattened and concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2, act="relu")
        self.c2 = conv_bn(16, 16, 3, 2, act="relu")
        self.c3 = conv_bn(16, 16, 3, 2, act="relu")
        self.cls = nn.Conv2d(16, 6, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.c2(self.c1(x))  # 16x16
        p4 = self.c3(p3) * 4.0  # 8x8, a larger range
        return torch.cat([self.cls(p3).flatten(2), self.cls(p4).flatten(2)], 2)


class GroupedDeconv(nn.Module):
    """CenterNet/DLA-style upsampling: a depthwise (groups = channels) ConvTranspose,
    BatchNorm, then a pointwise Conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2, act="relu")
        self.c2 = conv_bn(16, 32, 3, 2, act="relu")
        self.up = nn.ConvTranspose2d(32, 32, 4, 2, 1, groups=32, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.out = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.bn(self.up(self.c2(self.c1(x))))))


class SegSoftmax(nn.Module):
    """Segmentation head with Softmax over the channel axis after a bilinear Resize,
    and a dead branch (a ReLU that is 0 on every input) concatenated in."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2, act="relu")
        self.c2 = conv_bn(16, 16, 3, 1, act="relu")
        self.dead = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(20, 5, 1)

    def finalize(self) -> None:
        """Make the dead branch dead: tiny weights, a large negative bias."""
        with torch.no_grad():
            self.dead.weight.mul_(0.01)
            self.dead.bias.fill_(-50.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(self.c1(x))
        y = self.cls(torch.cat([y, F.relu(self.dead(y))], 1))
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.softmax(y, dim=1)


class TokenMixer(nn.Module):
    """Hybrid CNN: a Conv stem, then tokens (N, HW, C) through LayerNormalization and
    an MLP of MatMul + Add on 3-D tensors with a residual Add, mean-pooled, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, 16, 3, 2, act="relu"),
            conv_bn(16, 32, 3, 2, act="relu"),
            conv_bn(32, 32, 3, 2, act="relu"),
        )
        self.norm = nn.LayerNorm(32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # N, 64, 32
        tokens = tokens + self.fc2(F.relu(self.fc1(self.norm(tokens))))
        return self.head(tokens.mean(1))


# -- Registry, building and export --------------------------------------------------


@dataclass(frozen=True)
class ExportModel:
    """One benchmark model: its name, its class, its input layout and size."""

    name: str
    factory: Callable[[], nn.Module]
    layout: str = "NCHW"
    size: int = 64

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The model's input shape in its layout."""
        if self.layout == "NHWC":
            return (batch, self.size, self.size, 3)
        return (batch, 3, self.size, self.size)


MODELS: tuple[ExportModel, ...] = (
    ExportModel("yolo", YoloLike),
    ExportModel("yolov5-decode", Yolo5Decode),
    ExportModel("deeplab", DeepLabLike),
    ExportModel("hrnet", HRNetLike),
    ExportModel("mobilenetv3", MobileNetV3Like),
    ExportModel("keras-nhwc", KerasNHWC, layout="NHWC"),
    ExportModel("pruned", Pruned),
    ExportModel("misc-ops", MiscOps),
    ExportModel("shared-head", SharedHead),
    ExportModel("grouped-deconv", GroupedDeconv),
    ExportModel("seg-softmax", SegSoftmax),
    ExportModel("token-mixer", TokenMixer),
)


def seed_for(name: str) -> int:
    """A fixed seed per model, from its name (not ``hash``, which varies per process)."""
    return sum(map(ord, name))


def set_batchnorm_statistics(model: nn.Module, images: torch.Tensor, batch: int = 16) -> None:
    """Set every BatchNorm's running mean and variance to its statistics over ``images``
    (cumulative average over batches of ``batch``), as training would."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])


def randomize_batchnorm(model: nn.Module, seed: int = 7) -> None:
    """Give every BatchNorm non-trivial gamma (0.5 to 1.5) and beta (sd 0.3), and scale
    its running variance by 0.8 to 1.2, so that folding it changes the weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.mul_(torch.rand(n, generator=generator) * 0.4 + 0.8)


def build(spec: ExportModel, images: np.ndarray) -> nn.Module:
    """The model of ``spec`` in eval mode, with seeded weights, BatchNorm statistics
    measured on ``images`` (float32, in the model's layout) and its ``finalize`` edit
    (pruning, a dead branch) applied last."""
    torch.manual_seed(seed_for(spec.name))
    model = spec.factory()
    set_batchnorm_statistics(model, torch.from_numpy(images))
    randomize_batchnorm(model)
    finalize = getattr(model, "finalize", None)
    if finalize is not None:
        finalize()
    return model.eval()


def export(model: nn.Module, example: np.ndarray, path: Path, opset: int) -> None:
    """Export ``model`` with torch's TorchScript exporter (``dynamo=False``; the dynamo
    exporter needs onnxscript) at a fixed batch of 1: input ``images``, outputs
    ``output0``, ``output1``, ..."""
    inputs = torch.from_numpy(example)
    with torch.no_grad():
        result = model(inputs)
    count = len(result) if isinstance(result, tuple) else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the exporter
        torch.onnx.export(
            model,
            (inputs,),
            str(path),
            input_names=["images"],
            output_names=[f"output{i}" for i in range(count)],
            opset_version=opset,
            dynamo=False,
        )
