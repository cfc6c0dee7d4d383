"""``drpaiq quantize``."""

from __future__ import annotations

import click


@click.command("quantize")
def quantize_command() -> None:
    """Quantize (being written)."""
