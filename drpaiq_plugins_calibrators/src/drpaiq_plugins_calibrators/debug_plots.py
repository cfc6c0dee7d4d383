"""Calibration debug output: ``calibration.json`` and one PNG per tensor.

The JSON lists every tensor's range, the statistics behind it and the calibrator's
settings; it is always written. The PNGs need matplotlib (the ``plot`` extra of
drpaiq-core), imported only here and only when plots are asked for; without it one
warning says how to install it. File names come from tensor names made safe for any
file system (no path separators, no leading dots) and are prefixed with the tensor's
position so that two names that sanitize alike never collide.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import TensorRange
from drpaiq_core.write import write_bytes, write_text

log = logging.getLogger("drpaiq")

#: The JSON file written into the debug folder.
REPORT_NAME = "calibration.json"

#: Draws one tensor's figure: ``plot(figure, tensor_name, tensor_range)``.
PlotFunction = Callable[[Any, str, TensorRange], None]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_MAX_NAME = 80


def safe_file_stem(index: int, name: str) -> str:
    """A file-name stem for the ``index``-th tensor ``name``: only letters, digits,
    ``._-``; no leading dot and no ``..``; at most 80 characters of the name."""
    cleaned = _DOTS.sub("_", _UNSAFE.sub("_", name)).lstrip(".")[:_MAX_NAME] or "tensor"
    return f"{index:04d}_{cleaned}"


def _json_number(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else None


def _tensor_entry(tensor_range: TensorRange) -> dict[str, Any]:
    details = tensor_range.details
    entry: dict[str, Any] = {
        "rmin": _json_number(tensor_range.rmin),
        "rmax": _json_number(tensor_range.rmax),
    }
    for key in ("min", "max", "threshold", "kl_min", "bin_width"):
        if key in details:
            entry[key] = _json_number(details[key])
    for key in ("count", "num_bins", "num_quantized_bins"):
        if key in details:
            entry[key] = int(details[key])
    if "percentile" in details:
        entry["percentile_value"] = float(details["percentile"])
    if "histogram" in details:
        entry["histogram_bins"] = int(np.asarray(details["histogram"]).size)
    if details.get("empty"):
        entry["empty"] = True
    return entry


def _prepare(debug_dir: Path) -> None:
    if debug_dir.exists() and not debug_dir.is_dir():
        raise UserError(f"debug folder {debug_dir} is a file; give a folder path")
    try:
        debug_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create debug folder {debug_dir}: {exc.strerror}") from None


def write_report(
    debug_dir: Path,
    method: str,
    settings: Mapping[str, Any],
    ranges: Mapping[str, TensorRange],
    *,
    plot: PlotFunction | None,
) -> None:
    """Write ``calibration.json`` and, when ``plot`` is given and matplotlib is
    installed, one PNG per tensor into ``debug_dir`` (created if missing)."""
    debug_dir = Path(debug_dir)
    _prepare(debug_dir)
    figure_class = _figure_class() if plot is not None and ranges else None
    tensors: dict[str, Any] = {}
    for index, (name, tensor_range) in enumerate(ranges.items()):
        entry = _tensor_entry(tensor_range)
        if figure_class is not None and plot is not None and not tensor_range.details.get("empty"):
            png = f"{safe_file_stem(index, name)}.png"
            figure = figure_class(figsize=(8, 6), dpi=100)
            plot(figure, name, tensor_range)
            buffer = io.BytesIO()
            # A fixed creation date keeps the PNG bytes identical across runs.
            figure.savefig(buffer, format="png", metadata={"Software": None})
            write_bytes(debug_dir / png, buffer.getvalue())
            entry["plot"] = png
        tensors[name] = entry
    document = {"method": method, "settings": dict(settings), "tensors": tensors}
    write_text(debug_dir / REPORT_NAME, json.dumps(document, indent=2, allow_nan=False) + "\n")
    log.info("calibration debug output for %d tensors written to %s", len(tensors), debug_dir)


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning(
            'calibration plots need matplotlib: pip install "drpaiq-core[plot]" '
            "(writing calibration.json only)"
        )
        return None
    return Figure


def plot_entropy(figure: Any, name: str, tensor_range: TensorRange) -> None:
    """Top: the magnitude histogram (log counts) with the threshold and the maximum;
    bottom: the KL divergence of every candidate threshold, the chosen one marked."""
    details = tensor_range.details
    counts = np.asarray(details["histogram"])
    width = float(details["bin_width"])
    threshold = float(details.get("threshold", counts.size * width))
    edges = np.arange(counts.size + 1) * width
    top, bottom = figure.subplots(2, 1)
    top.stairs(counts, edges, fill=True, color="tab:blue")
    top.set_yscale("symlog", linthresh=1.0)
    top.axvline(threshold, color="tab:red", label=f"threshold {threshold:.4g}")
    top.axvline(max(-details["min"], details["max"]), color="gray", ls="--", label="max |x|")
    top.set_xlabel("|x|")
    top.set_ylabel("count")
    top.legend(loc="upper right")
    zeros = int(details.get("zeros", 0))
    top.set_title(
        f"{name}\nrange [{tensor_range.rmin:.4g}, {tensor_range.rmax:.4g}]"
        + (f", {zeros} exact zeros (not searched)" if zeros else ""),
        fontsize=9,
    )
    curve = details.get("kl")
    if curve is not None:
        curve = np.asarray(curve)
        levels = int(details["num_quantized_bins"])
        thresholds = (levels + np.arange(curve.size)) * width
        finite = np.isfinite(curve)
        bottom.plot(thresholds[finite], curve[finite], color="tab:green")
        bottom.axvline(threshold, color="tab:red")
        bottom.set_xlabel("candidate threshold")
        bottom.set_ylabel("KL divergence")
        if np.all(curve[finite] > 0):
            bottom.set_yscale("log")
    else:
        bottom.text(0.5, 0.5, "no search: all values within the quantized bins", ha="center")
    figure.tight_layout()


def plot_percentile(figure: Any, name: str, tensor_range: TensorRange) -> None:
    """The signed histogram (log counts) with the two percentile cuts."""
    details = tensor_range.details
    counts = np.asarray(details["histogram"])
    lower = np.asarray(details["histogram_lower"])
    upper = np.asarray(details["histogram_upper"])
    edges = np.append(lower, upper[-1:])
    axes = figure.subplots(1, 1)
    axes.stairs(counts, edges, fill=True, color="tab:blue")
    axes.set_yscale("symlog", linthresh=1.0)
    axes.axvline(tensor_range.rmin, color="tab:red", label=f"rmin {tensor_range.rmin:.4g}")
    axes.axvline(tensor_range.rmax, color="tab:red", label=f"rmax {tensor_range.rmax:.4g}")
    axes.set_xlabel("x")
    axes.set_ylabel("count")
    axes.legend(loc="upper right")
    axes.set_title(f"{name}\npercentile {details['percentile']}", fontsize=9)
    figure.tight_layout()
