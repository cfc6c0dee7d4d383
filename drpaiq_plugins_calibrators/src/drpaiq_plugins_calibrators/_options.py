"""Reading the calibrators' advanced options, with one clear error line per mistake."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drpaiq_core.errors import UserError


def int_option(
    options: Mapping[str, Any], name: str, default: int, *, low: int, high: int, why: str = ""
) -> int:
    """The integer option ``name`` (a number or a string of one), within ``[low, high]``;
    ``why`` (the reason for the bounds and how to fix the value) ends the error line of
    a value out of bounds."""
    raw = options.get(name, default)
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise UserError(
            f"advanced option {name} must be an integer between {low} and {high}, got {raw!r}"
        ) from None
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise UserError(
            f"advanced option {name} must be between {low} and {high}, got {value}{reason}"
        )
    return value


def float_option(
    options: Mapping[str, Any],
    name: str,
    default: float,
    *,
    above: float,
    at_most: float,
) -> float:
    """The float option ``name`` (a number or a string of one), in ``(above, at_most]``."""
    raw = options.get(name, default)
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(str(raw).strip()) if not isinstance(raw, (int, float)) else float(raw)
    except ValueError:
        raise UserError(
            f"advanced option {name} must be a number greater than {above:g} and at most "
            f"{at_most:g}, got {raw!r}"
        ) from None
    if not (math.isfinite(value) and above < value <= at_most):
        raise UserError(
            f"advanced option {name} must be greater than {above:g} and at most {at_most:g}, "
            f"got {raw!r}"
        )
    return value


def path_option(options: Mapping[str, Any], name: str) -> Path | None:
    """The folder option ``name``, or None when absent or empty."""
    raw = options.get(name)
    if raw is None or str(raw).strip() == "":
        return None
    return Path(str(raw).strip())


def bool_option(options: Mapping[str, Any], name: str, default: bool) -> bool:
    """The boolean option ``name`` (a bool, or ``True``/``False`` in any case)."""
    raw = options.get(name, default)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("true", "false"):
        raise UserError(f"advanced option {name} must be True or False, got {raw!r}")
    return text == "true"
