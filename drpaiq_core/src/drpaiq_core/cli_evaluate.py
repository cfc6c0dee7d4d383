"""``drpaiq evaluate``: top-1/top-5 accuracy of one or more models on a labeled folder."""

from __future__ import annotations

import click


@click.command("evaluate")
def evaluate_command() -> None:
    """Evaluate models (being written)."""
