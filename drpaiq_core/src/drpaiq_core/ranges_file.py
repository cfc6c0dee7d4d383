"""Calibrated ranges kept in a JSON file: one calibration reused across runs, and the
ranges of chosen tensors pinned by hand.

``quantize --save-ranges FILE`` writes every range the run knew (calibrated or read);
``quantize --load-ranges FILE`` takes the ranges of the tensors the file names and
calibrates only the others, so that a run that changes the exclusions, the activation
type or bias correction does not go over a large calibration set again. The file::

    {
      "format": "drpaiq-ranges",
      "version": 1,
      "model": "yolo.onnx",
      "model_sha256": "...",
      "calibrate_method": "Entropy",
      "activation_symmetric": false,
      "samples": 1000,
      "ranges": {"/stem/Clip_output_0": [0.0, 6.0], "...": [-3.5, 4.25]}
    }

Only ``ranges`` is required, so a hand-written ``{"ranges": {"t": [0, 1]}}`` pins the
range of tensor ``t``. Names are those of the model as quantized (after pre-processing;
the summary JSON's ``plan.ranges`` lists them). The other fields say where the ranges
came from; a run whose model file or calibration differs warns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drpaiq_core.errors import UserError
from drpaiq_core.graph import ModelGraph
from drpaiq_core.plugin_api import TensorRange

log = logging.getLogger("drpaiq")

FORMAT = "drpaiq-ranges"
VERSION = 1

_FIX = 'write it with --save-ranges, or as {"ranges": {"tensor name": [min, max]}}'


@dataclass(frozen=True)
class LoadedRanges:
    """A ranges file as read.

    :ivar path: the file.
    :ivar ranges: tensor -> (min, max), in the file's order.
    :ivar model_sha256: SHA-256 of the model file the ranges were saved for, if recorded.
    :ivar calibrate_method: the calibrator that measured them, if recorded.
    :ivar activation_symmetric: the activation grid they were measured for, if recorded.
    :ivar samples: the calibration samples they were measured on, if recorded.
    """

    path: Path
    ranges: dict[str, tuple[float, float]]
    model_sha256: str | None = None
    calibrate_method: str | None = None
    activation_symmetric: bool | None = None
    samples: int | None = None

    def tensor_ranges(self) -> dict[str, TensorRange]:
        """The ranges as calibrators give them."""
        return {name: TensorRange(lo, hi) for name, (lo, hi) in self.ranges.items()}

    def check_names(self, graph: ModelGraph) -> None:
        """Refuse a name that is not a float activation of ``graph`` (a typo, a tensor
        pre-processing folded away, a weight): its range would silently do nothing."""
        for name in self.ranges:
            activation = graph.producer(name) is not None or graph.is_graph_input(name)
            if not activation or not graph.is_float(name):
                what = "a weight or constant" if graph.is_constant_name(name) else None
                what = what or ("not float" if activation else "not a tensor of the model")
                raise UserError(
                    f"ranges file {self.path}: tensor {name!r} is {what} as quantized (after "
                    "pre-processing); name float activations, as the summary JSON's "
                    "plan.ranges lists them, or save the file anew with --save-ranges"
                )

    def warn_if_other_source(self, model_sha256: str, method: str, symmetric: bool) -> None:
        """Warn when the file was saved for another model file or calibration."""
        if self.model_sha256 is not None and self.model_sha256 != model_sha256:
            log.warning(
                f"ranges file {self.path} was saved for another model file (SHA-256 "
                f"differs); its {len(self.ranges)} range(s) are used as they are: if the "
                "model's weights changed, calibrate again"
            )
        if self.calibrate_method is not None and self.calibrate_method.lower() != method.lower():
            log.warning(
                f"ranges file {self.path} holds {self.calibrate_method} ranges; {method} "
                "measures only the tensors it lacks"
            )
        if self.activation_symmetric is not None and self.activation_symmetric != symmetric:
            grid = "symmetric" if self.activation_symmetric else "asymmetric"
            log.warning(
                f"ranges file {self.path} was calibrated for {grid} activations; its ranges "
                "are used as they are on this run's grid"
            )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a model's bytes, in hex: the file's, then those of the external
    data files it names (a model without external data: the file's alone)."""
    from drpaiq_core.load import model_files

    digest = hashlib.sha256()
    for file in model_files(path):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_ranges(path: Path) -> LoadedRanges:
    """Read and check a ranges file.

    :raises UserError: a missing or unreadable file, not JSON, another format or a newer
        version, or a range that is not two finite numbers with min <= max; the message
        names the file and, for a range, the tensor.
    """
    try:
        # utf-8-sig: a byte-order mark, as some Windows editors write, is not an error.
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"ranges file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"ranges file {path} cannot be read ({exc}); {_FIX}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"ranges file {path}, line {exc.lineno}: not JSON ({exc.msg}); {_FIX}"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("ranges"), dict):
        raise UserError(f'ranges file {path} has no "ranges" object; {_FIX}')
    if document.get("format", FORMAT) != FORMAT:
        raise UserError(
            f"ranges file {path} is of format {document['format']!r}, not {FORMAT!r}; {_FIX}"
        )
    version = document.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(
            f"ranges file {path} is of version {version!r}; this drpaiq reads version "
            f"{VERSION}: upgrade drpaiq or save the ranges again with this one"
        )
    ranges = {name: _range(path, name, value) for name, value in document["ranges"].items()}
    return LoadedRanges(
        path=Path(path),
        ranges=ranges,
        model_sha256=_optional(document, "model_sha256", str),
        calibrate_method=_optional(document, "calibrate_method", str),
        activation_symmetric=_optional(document, "activation_symmetric", bool),
        samples=_optional(document, "samples", int),
    )


def _range(path: Path, name: str, value: Any) -> tuple[float, float]:
    bad = f"ranges file {path}: tensor {name!r} has range {json.dumps(value)}"
    numbers = isinstance(value, list) and len(value) == 2
    if not numbers or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        raise UserError(f"{bad}; give two numbers [min, max]")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"{bad}; give finite numbers")
    if lo > hi:
        raise UserError(f"{bad}; min is above max: give [min, max]")
    return lo, hi


def _optional(document: Mapping[str, Any], key: str, kind: type) -> Any:
    value = document.get(key)
    return value if isinstance(value, kind) else None


def ranges_document(
    ranges: Mapping[str, TensorRange],
    order: Iterable[str],
    *,
    model_path: Path,
    model_sha256: str,
    calibrate_method: str,
    activation_symmetric: bool,
    samples: int,
) -> str:
    """The text of a ranges file holding ``ranges``: the tensors of ``order`` first, in
    that order, then the others in their order in ``ranges``. The same ranges give the
    same bytes; every float is written so that it reads back exactly."""
    first = [name for name in dict.fromkeys(order) if name in ranges]
    placed = set(first)
    names = first + [name for name in ranges if name not in placed]
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": Path(model_path).name,
        "model_sha256": model_sha256,
        "calibrate_method": calibrate_method,
        "activation_symmetric": activation_symmetric,
        "samples": samples,
    }
    # One range per line, so that a file can be read, diffed and edited by hand.
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in header.items()]
    entries = [
        f"    {json.dumps(name)}: "
        f"{json.dumps([float(ranges[name].rmin), float(ranges[name].rmax)])}"
        for name in names
    ]
    body = ",\n".join(entries)
    return "{\n" + "\n".join(lines) + '\n  "ranges": {\n' + body + "\n  }\n}\n"
