"""``drpaiq evaluate``: top-1/top-5 accuracy of one or more models on a labeled folder;
``drpaiq compare``: how far the outputs of INT8 models are from the FP32 model's, on
any folder of images, for any model.

The reference tool's accuracy script took ``--nchw``/``--nhwc`` for the input layout;
both flags work here and select the ``nchw_image``/``nhwc_image`` reader (without
them: the group's ``--reader``, else ``nchw_image``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from drpaiq_core.cli import AppState
from drpaiq_core.cli_quantize import ReferenceCommand, _norm
from drpaiq_core.errors import UserError
from drpaiq_core.options import parse_shape


class EvaluateCommand(ReferenceCommand):
    """List values as several shell words; no advanced options."""

    accepts_advanced = False


def _image_options(dataset_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options ``evaluate`` and ``compare`` share: the models, the image folder
    and how its images are read, the output form."""
    options = [
        click.argument("models", nargs=-1, metavar="MODEL [MODEL...]"),
        click.option("--dataset", "-d", "dataset", required=True, metavar="DIR", help=dataset_help),
        click.option(
            "--nchw", "nchw", is_flag=True, help="Channels-first input (nchw_image reader)."
        ),
        click.option(
            "--nhwc", "nhwc", is_flag=True, help="Channels-last input (nhwc_image reader)."
        ),
        click.option("--norm_mean", "norm_mean", metavar="R G B", help="Per-channel mean."),
        click.option("--norm_std", "norm_std", metavar="R G B", help="Per-channel std."),
        click.option(
            "--batch-size",
            "batch_size",
            type=click.IntRange(min=1),
            default=32,
            show_default=True,
            help="Images per batch (a model with a fixed batch size runs in batches of its "
            "size; a short last batch is filled up, so every model sees every image).",
        ),
        click.option(
            "--size-limit",
            "size_limit",
            type=click.IntRange(min=0),
            default=0,
            help="Use at most this many images (0 = all).",
        ),
        click.option(
            "--input-shape", "input_shape", metavar="N,C,H,W", help="For dynamic H/W models."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def _image_settings(state: AppState, params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~drpaiq_core.evaluate.evaluate` and
    :func:`~drpaiq_core.compare.compare` from the shared options."""
    from drpaiq_core.datasource import DEFAULT_READER

    if params["nchw"] and params["nhwc"]:
        raise UserError("give --nchw or --nhwc, not both")
    reader = "nchw_image" if params["nchw"] else "nhwc_image" if params["nhwc"] else None
    return {
        "dataset": Path(params["dataset"]),
        "host": state.host,
        "reader": reader or state.reader or DEFAULT_READER,
        "norm_mean": _norm(params["norm_mean"], "--norm_mean"),
        "norm_std": _norm(params["norm_std"], "--norm_std"),
        "batch_size": params["batch_size"],
        "size_limit": params["size_limit"],
        "input_shape": parse_shape(params["input_shape"]) if params["input_shape"] else None,
        "quiet": state.quiet,
    }


def _print(result: Any, as_json: bool) -> None:
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


@click.command("evaluate", cls=EvaluateCommand)
@_image_options("Labeled folder: one sub-folder per class (sorted names = class indices).")
@click.pass_obj
def evaluate_command(state: AppState, **params: Any) -> None:
    """Top-1 and top-5 accuracy of MODELs on a labeled image folder, side by side,
    with the delta of each model to the first."""
    from drpaiq_core.evaluate import evaluate

    if not params["models"]:
        raise UserError("no model given: drpaiq evaluate MODEL [MODEL...] --dataset DIR")
    settings = _image_settings(state, params)
    _print(evaluate([Path(m) for m in params["models"]], **settings), params["as_json"])


@click.command("compare", cls=EvaluateCommand)
@_image_options("Folder of images (sub-folders included; no labels needed).")
@click.option(
    "--tensors",
    "tensors",
    is_flag=True,
    help="Also compare every intermediate tensor each model shares by name with the first, "
    "in graph order, with each tensor's own rounding error.",
)
@click.pass_obj
def compare_command(state: AppState, **params: Any) -> None:
    """How far the outputs of each MODEL are from the first MODEL's (SQNR per output,
    largest difference) on a folder of images: any model, detectors and segmenters
    included; no labels needed."""
    from drpaiq_core.compare import compare, require_two

    require_two(params["models"])
    settings = _image_settings(state, params)
    result = compare([Path(m) for m in params["models"]], **settings, tensors=params["tensors"])
    _print(result, params["as_json"])
