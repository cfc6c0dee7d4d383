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
    for key in ("min", "max", "threshold_low", "threshold_high", "bin_width", "expected_error"):
        if key in details:
            entry[key] = _json_number(details[key])
    for key in ("count", "num_bins", "num_quantized_bins", "levels_low", "levels_high"):
        if key in details:
            entry[key] = int(details[key])
    if "percentile" in details:
        entry["percentile_value"] = float(details["percentile"])
    if "zeros" in details:
        entry["zeros"] = int(details["zeros"])
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
    # The core stages this folder and names the user's folder once it is published.
    log.debug("calibration debug output for %d tensors staged in %s", len(tensors), debug_dir)


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
    """Top: the histogram (log counts) with the chosen range and the extremes; bottom:
    the KL divergence of every candidate threshold of each side, the chosen ones marked
    (the negative side's candidates at their negative value)."""
    details = tensor_range.details
    top, bottom = figure.subplots(2, 1)
    _histogram_axes(top, details, tensor_range)
    zeros = int(details.get("zeros", 0))
    top.set_title(
        f"{name}\nrange [{tensor_range.rmin:.4g}, {tensor_range.rmax:.4g}]"
        + (f", {zeros} exact zeros (not searched)" if zeros else ""),
        fontsize=9,
    )
    width = float(details["bin_width"])
    drawn = False
    for side, sign, color in (("high", 1.0, "tab:green"), ("low", -1.0, "tab:purple")):
        curve = details.get(f"kl_{side}")
        if curve is None:
            continue
        # The first candidate keeps one bin per level of the side.
        levels = int(details[f"levels_{side}"])
        curve = np.asarray(curve)
        thresholds = sign * (levels + np.arange(curve.size)) * width
        finite = np.isfinite(curve)
        bottom.plot(thresholds[finite], curve[finite], color=color)
        drawn = drawn or bool(np.all(curve[finite] > 0))
    for key in ("threshold_low", "threshold_high"):
        if details.get(key) is not None:
            bottom.axvline(float(details[key]), color="tab:red")
    if drawn:
        bottom.set_yscale("log")
    bottom.set_xlabel("candidate threshold")
    bottom.set_ylabel("KL divergence")
    figure.tight_layout()


def _histogram_axes(axes: Any, details: Mapping[str, Any], tensor_range: TensorRange) -> None:
    counts = np.asarray(details["histogram"])
    lower = np.asarray(details["histogram_lower"])
    upper = np.asarray(details["histogram_upper"])
    axes.stairs(counts, np.append(lower, upper[-1:]), fill=True, color="tab:blue")
    axes.set_yscale("symlog", linthresh=1.0)
    # Red: the range chosen; dashed gray: the extremes seen.
    for end in (tensor_range.rmin, tensor_range.rmax):
        axes.axvline(end, color="tab:red")
    for extreme in (details["min"], details["max"]):
        axes.axvline(extreme, color="gray", ls="--")
    axes.set_xlabel("x")
    axes.set_ylabel("count")


def plot_percentile(figure: Any, name: str, tensor_range: TensorRange) -> None:
    """The histogram (log counts) with the two percentile cuts and the extremes."""
    percentile = tensor_range.details["percentile"]
    _range_plot(figure, tensor_range, f"{name}\npercentile {percentile}: range")


def plot_mse(figure: Any, name: str, tensor_range: TensorRange) -> None:
    """The histogram (log counts) with the range of least expected error."""
    error = tensor_range.details.get("expected_error", float("nan"))
    _range_plot(
        figure, tensor_range, f"{name}\nMSE (expected squared error {error:.3g}, summed): range"
    )


def _range_plot(figure: Any, tensor_range: TensorRange, title: str) -> None:
    """One histogram panel with the range, titled ``title [rmin, rmax]``."""
    axes = figure.subplots(1, 1)
    _histogram_axes(axes, tensor_range.details, tensor_range)
    axes.set_title(
        f"{title} [{tensor_range.rmin:.4g}, {tensor_range.rmax:.4g}]",
        fontsize=9,
    )
    figure.tight_layout()
