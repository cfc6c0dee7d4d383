"""``drpaiq list-ops MODEL``: how many nodes of each op type a model has.

Useful before choosing exclusions: it shows whether a model has the ops a rule names
(``--operate_to_exclude Tanh`` on a model without Tanh matches nothing) and how many
nodes an op-type rule would leave in float.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from drpaiq_core.errors import UserError

if TYPE_CHECKING:
    import onnx


def op_key(node: onnx.NodeProto) -> str:
    """``OpType`` for the default ONNX domain, ``domain:OpType`` otherwise (the spelling
    op quantizers use in ``OP_TYPES``)."""
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return f"{node.domain}:{node.op_type}"


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    # Control-flow ops (If, Loop, Scan) carry subgraphs whose nodes count too.
    import onnx

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)


def count_op_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """Op types and their node counts, most frequent first, ties by name."""
    counts = Counter(op_key(node) for node in _all_nodes(model.graph))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def read_model(path: Path) -> onnx.ModelProto:
    """Read the model's graph (weights stored as external data are not needed)."""
    import onnx

    if not path.is_file():
        raise UserError(f"model {path} does not exist or is not a file; check the path")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(
            f"model {path} is not a readable ONNX file ({type(exc).__name__}); "
            "check that it is a complete .onnx file"
        ) from None


@click.command("list-ops")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def list_ops_command(model: Path, as_json: bool) -> None:
    """Count the nodes of each op type in MODEL (an ONNX file), most frequent first."""
    counts = count_op_types(read_model(model))
    total = sum(count for _, count in counts)
    if as_json:
        click.echo(
            json.dumps({"model": str(model), "nodes": total, "op_types": dict(counts)}, indent=2)
        )
        return
    width = max([len("op type"), len("total"), *(len(op) for op, _ in counts)])
    digits = max(len("nodes"), len(str(total)))
    click.echo(f"{'op type'.ljust(width)}  {'nodes'.rjust(digits)}")
    for op, count in counts:
        click.echo(f"{op.ljust(width)}  {str(count).rjust(digits)}")
    click.echo(f"{'total'.ljust(width)}  {str(total).rjust(digits)}")
