"""``drpaiq evaluate``: top-1/top-5 accuracy of one or more models on a labeled folder.

The reference tool's accuracy script took ``--nchw``/``--nhwc`` for the input layout;
both flags work here and select the ``nchw_image``/``nhwc_image`` reader (without
them: the group's ``--reader``, else ``nchw_image``).
"""

from __future__ import annotations

import json
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


@click.command("evaluate", cls=EvaluateCommand)
@click.argument("models", nargs=-1, metavar="MODEL [MODEL...]")
@click.option(
    "--dataset",
    "-d",
    "dataset",
    required=True,
    metavar="DIR",
    help="Labeled folder: one sub-folder per class (sorted names = class indices).",
)
@click.option("--nchw", "nchw", is_flag=True, help="Channels-first input (nchw_image reader).")
@click.option("--nhwc", "nhwc", is_flag=True, help="Channels-last input (nhwc_image reader).")
@click.option("--norm_mean", "norm_mean", metavar="[R,G,B]", help="Per-channel mean.")
@click.option("--norm_std", "norm_std", metavar="[R,G,B]", help="Per-channel std.")
@click.option(
    "--batch-size",
    "batch_size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Images per batch (a model with a fixed batch size runs in batches of its size; "
    "a short last batch is filled up, so every model scores every image).",
)
@click.option(
    "--size-limit",
    "size_limit",
    type=click.IntRange(min=0),
    default=0,
    help="Use at most this many images (0 = all).",
)
@click.option("--input-shape", "input_shape", metavar="N,C,H,W", help="For dynamic H/W models.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def evaluate_command(state: AppState, **params: Any) -> None:
    """Top-1 and top-5 accuracy of MODELs on a labeled image folder, side by side,
    with the delta of each model to the first."""
    from drpaiq_core.datasource import DEFAULT_READER
    from drpaiq_core.evaluate import evaluate

    if not params["models"]:
        raise UserError("no model given: drpaiq evaluate MODEL [MODEL...] --dataset DIR")
    if params["nchw"] and params["nhwc"]:
        raise UserError("give --nchw or --nhwc, not both")
    reader = "nchw_image" if params["nchw"] else "nhwc_image" if params["nhwc"] else None
    result = evaluate(
        [Path(m) for m in params["models"]],
        dataset=Path(params["dataset"]),
        host=state.host,
        reader=reader or state.reader or DEFAULT_READER,
        norm_mean=_norm(params["norm_mean"], "--norm_mean"),
        norm_std=_norm(params["norm_std"], "--norm_std"),
        batch_size=params["batch_size"],
        size_limit=params["size_limit"],
        input_shape=parse_shape(params["input_shape"]) if params["input_shape"] else None,
        quiet=state.quiet,
    )
    if params["as_json"]:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.to_text())
