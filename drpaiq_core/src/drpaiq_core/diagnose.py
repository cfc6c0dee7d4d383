"""Where the quantization error comes from: each quantized tensor left in float in turn.

Run after the plan (``drpaiq quantize --diagnose``). On a few calibration samples
(spread over the calibration data) it runs the FP32 model, the whole INT8 model, and one INT8
variant per *suspect*, in which that suspect alone stays float:

* an activation tensor: its QuantizeLinear/DequantizeLinear pair (and any
  requantization of it on the way into a node) is left out;
* a node's weights: the node reads its float weights.

Each variant is scored by how close its outputs are to FP32's: the SQNR of the outputs
in dB (signal power over the power of the difference, averaged over the model's
outputs: :func:`drpaiq_core.compare.sqnr_db`) and, when the first output holds class
scores ``[N, classes]``, the mean KL divergence of its class probabilities. A
suspect's *gain* is how many dB the outputs gain when it alone is float: the suspects
with the largest gain are where the error comes from.

A gain says where the error arises, not what leaving nodes in float will buy: the
nodes to exclude for a tensor are the node that produces it and those that read it
(and a Conv whose output range a ReLU narrows), and they leave their other tensors
quantized. So the nodes of the top suspects are then excluded together through the
normal plan (``-exn``), and that plan's score is measured too: the number to expect
when quantizing again with those exclusions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from drpaiq_core.compare import format_db, json_db, sqnr_db
from drpaiq_core.datasource import SpreadReader
from drpaiq_core.evaluate import is_probabilities, kl_per_image, log_probabilities
from drpaiq_core.graph import ModelGraph
from drpaiq_core.plan import QuantPlan
from drpaiq_core.plugin_api import Batch, Reader
from drpaiq_core.progress import progress
from drpaiq_core.select import Selection

#: How many of the top suspects the suggested exclusion tries.
SUGGESTED = 3
#: The least gain (dB) for which a suspect's nodes join the suggested exclusion.
MIN_STEP_DB = 0.1
#: Rows of the printed table (the JSON lists every suspect).
PRINTED = 10


@dataclass(frozen=True)
class Score:
    """How close a model's outputs are to FP32's on the diagnosis samples.

    :ivar sqnr_db: signal-to-quantization-noise ratio of the outputs in dB (``inf`` when
        they equal FP32's).
    :ivar kl: mean KL divergence of the class probabilities from FP32's, or None when
        the first output is not ``[N, classes]``.
    """

    sqnr_db: float
    kl: float | None

    def to_dict(self) -> dict[str, float | None]:
        """JSON-able form (an infinite SQNR is null)."""
        return {"sqnr_db": json_db(self.sqnr_db), "kl": self.kl}


@dataclass(frozen=True)
class Suspect:
    """One quantized tensor or weight, and the score with it alone in float.

    :ivar kind: ``activation`` or ``weights``.
    :ivar tensor: the tensor's name in the FP32 model.
    :ivar op_type: the op that produces the activation (``input`` for a graph input) or
        that reads the weights.
    :ivar nodes: the nodes to exclude (``-exn``) to leave it float.
    :ivar score: the outputs' score with it alone in float.
    """

    kind: str
    tensor: str
    op_type: str
    nodes: tuple[str, ...]
    score: Score

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "tensor": self.tensor,
            "op_type": self.op_type,
            "nodes": list(self.nodes),
            **self.score.to_dict(),
        }


@dataclass(frozen=True)
class Step:
    """One step of the suggestion: a suspect's nodes excluded on top of the kept steps.

    :ivar added: the nodes this step adds.
    :ivar score: the score of the plan with the kept steps' nodes and these excluded.
    :ivar kept: whether the step gained enough to stay in the suggestion.
    """

    added: tuple[str, ...]
    score: Score
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"added": list(self.added), **self.score.to_dict(), "kept": self.kept}


@dataclass
class Diagnosis:
    """What :func:`diagnose` measured.

    :ivar samples: diagnosis samples (spread over the calibration data).
    :ivar quantized: the score of the whole INT8 model.
    :ivar suspects: every suspect, the largest gain first.
    :ivar steps: how the suggestion was built, step by step.
    :ivar suggested: the nodes of the top suspects, to exclude together.
    :ivar suggested_score: the score of the plan with those nodes excluded.
    """

    samples: int
    quantized: Score
    suspects: list[Suspect] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    suggested: tuple[str, ...] = ()
    suggested_score: Score | None = None

    def gain(self, score: Score) -> float:
        """How many dB ``score`` is above the whole INT8 model's."""
        return score.sqnr_db - self.quantized.sqnr_db

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "samples": self.samples,
            "quantized": self.quantized.to_dict(),
            "suspects": [
                {**s.to_dict(), "gain_db": json_db(self.gain(s.score))} for s in self.suspects
            ],
            "steps": [step.to_dict() for step in self.steps],
            "suggested_exclusions": list(self.suggested),
            "suggested": self.suggested_score.to_dict() if self.suggested_score else None,
        }

    def to_text(self, rows: int = PRINTED) -> str:
        """The report: the whole model's score, the top suspects, the suggestion."""
        kl = self.quantized.kl is not None
        lines = [
            f"diagnosis on {self.samples} calibration samples: INT8 outputs "
            f"{format_db(self.quantized.sqnr_db)} from FP32"
            + (f", KL {self.quantized.kl:.2e}" if kl else ""),
        ]
        if not self.suspects:
            lines.append("nothing quantized to diagnose")
            return "\n".join(lines)
        lines.append(f"the {min(rows, len(self.suspects))} largest gains with one tensor in float:")
        header = ["in float", "op", "SQNR", "gain", *(["KL"] if kl else []), "exclude (-exn)"]
        table = [header]
        for suspect in self.suspects[:rows]:
            label = f"{suspect.tensor} ({suspect.kind})"
            row = [
                label,
                suspect.op_type,
                format_db(suspect.score.sqnr_db),
                f"{self.gain(suspect.score):+.2f}",
                *(
                    [f"{suspect.score.kl:.2e}" if suspect.score.kl is not None else "-"]
                    if kl
                    else []
                ),
                ",".join(suspect.nodes) or "-",
            ]
            table.append(row)
        widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
        for row in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        if self.steps:
            lines.append(
                "excluding the top suspects' nodes one after the other (a step stays when "
                f"it gains {MIN_STEP_DB} dB or more):"
            )
            for step in self.steps:
                lines.append(
                    f"  + {','.join(step.added)}: {format_db(step.score.sqnr_db)} "
                    f"({self.gain(step.score):+.2f} dB){'' if step.kept else ', dropped'}"
                )
        if self.suggested and self.suggested_score is not None:
            lines.append(
                f"suggested: -exn {','.join(self.suggested)} "
                f"({self.gain(self.suggested_score):+.2f} dB"
                + (
                    f", KL {self.suggested_score.kl:.2e})"
                    if self.suggested_score.kl is not None
                    else ")"
                )
            )
        elif self.steps:
            lines.append("suggested: no exclusion (none gained enough)")
        return "\n".join(lines)


def diagnose(
    model: onnx.ModelProto,
    plan: QuantPlan,
    tied: Mapping[str, Sequence[str]],
    reader: Reader,
    samples: int,
    *,
    replan: Callable[[tuple[str, ...]], QuantPlan] | None = None,
    quiet: bool = False,
    workdir: Path | None = None,
) -> Diagnosis:
    """Score the INT8 model, each suspect alone in float, and the suggested exclusion.

    :param model: the prepared FP32 model the plan was built for (not modified).
    :param plan: the plan of the run (not modified).
    :param tied: node -> the nodes quantized as one with it (:func:`tied_nodes`), which
        are excluded with it.
    :param reader: the calibration data; ``samples`` of its samples are used, spread
        over it (:class:`~drpaiq_core.datasource.SpreadReader`).
    :param samples: how many samples to run (whole batches: one batch more may count).
    :param replan: the plan with more nodes excluded (the run's exclusions plus these);
        without it no suggestion is measured.
    :param quiet: no progress bars.
    :param workdir: where a model of 2 GB or more is staged for ONNX Runtime.
    """
    from drpaiq_core.calibrate import batch_samples
    from drpaiq_core.emit import emit

    batches = list(SpreadReader(reader, samples).batches())
    outputs = [o.name for o in model.graph.output]
    reference = _outputs(model, outputs, batches, workdir)
    signal = [
        sum(float(np.sum(np.square(r, dtype=np.float64))) for r in runs) for runs in zip(*reference)
    ]
    classes = _class_scores(reference)

    def score(variant: QuantPlan) -> Score:
        produced = _outputs(emit(model, variant), outputs, batches, workdir)
        return _score(reference, produced, signal, classes)

    diagnosis = Diagnosis(
        samples=sum(batch_samples(b.feeds) for b in batches), quantized=score(plan)
    )
    suspects = _suspects(model, plan, tied)
    scored = [
        dataclasses.replace(suspect, score=score(variant))
        for suspect, variant in progress(
            suspects, total=len(suspects), desc="diagnose", unit="tensor", quiet=quiet
        )
    ]
    # Largest gain first (a NaN score last); ties keep the graph order, so the report
    # is the same from run to run.
    diagnosis.suspects = sorted(
        scored, key=lambda s: math.inf if math.isnan(s.score.sqnr_db) else -s.score.sqnr_db
    )
    if replan is not None:
        _suggest(diagnosis, lambda nodes: score(replan(nodes)))
    return diagnosis


def _suggest(diagnosis: Diagnosis, measure: Callable[[tuple[str, ...]], Score]) -> None:
    """Exclude the nodes of the top suspects one suspect at a time, keeping each step
    only when the outputs gain at least :data:`MIN_STEP_DB` over the last kept one
    (gains do not add up: two suspects may be one error seen twice)."""
    chosen: tuple[str, ...] = ()
    best = diagnosis.quantized
    for suspect in diagnosis.suspects[:SUGGESTED]:
        if not diagnosis.gain(suspect.score) > 0:
            break
        added = tuple(n for n in suspect.nodes if n not in chosen)
        if not added:
            continue
        found = measure(chosen + added)
        kept = found.sqnr_db >= best.sqnr_db + MIN_STEP_DB
        diagnosis.steps.append(Step(added, found, kept))
        if kept:
            chosen, best = chosen + added, found
    if chosen:
        diagnosis.suggested, diagnosis.suggested_score = chosen, best


# -- suspects --------------------------------------------------------------------------


def tied_nodes(selection: Selection, graph: ModelGraph) -> dict[str, tuple[str, ...]]:
    """Node -> the other nodes quantized as one with it, which must leave INT8 together:
    a Conv and the ReLU that narrows its output (excluded alone, the Conv's output would
    be quantized over the whole pre-activation range on its way into the ReLU), a
    MatMul and the Add whose constant became its int32 bias, and chains of those."""
    pairs: list[tuple[str, str]] = []
    for source, target in selection.narrowed.items():
        first, second = graph.producer(source), graph.producer(target)
        if first is not None and second is not None:
            pairs.append((first.name, second.name))
    pairs.extend((add, matmul) for add, (matmul, _) in selection.fused_adds.items())
    linked: dict[str, set[str]] = {}
    for a, b in pairs:
        linked.setdefault(a, set()).add(b)
        linked.setdefault(b, set()).add(a)
    tied: dict[str, tuple[str, ...]] = {}
    for start in linked:
        seen, todo = {start}, [start]
        while todo:
            for other in sorted(linked[todo.pop()] - seen):
                seen.add(other)
                todo.append(other)
        tied[start] = tuple(sorted(seen - {start}))
    return tied


def _suspects(
    model: onnx.ModelProto, plan: QuantPlan, tied: Mapping[str, Sequence[str]]
) -> list[tuple[Suspect, QuantPlan]]:
    """Every quantized activation and weight, each with the plan that leaves it float."""
    producer = {out: node.name for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in dict.fromkeys(node.input):
            readers.setdefault(name, []).append(node)
    op_types = {node.name: node.op_type for node in model.graph.node}
    quantized = plan.quantized_nodes

    def to_exclude(nodes: Iterable[str]) -> tuple[str, ...]:
        names = [m for n in nodes for m in (n, *tied.get(n, ()))]
        return tuple(n for n in dict.fromkeys(names) if n in quantized)

    empty = Score(math.nan, None)
    found: list[tuple[Suspect, QuantPlan]] = []
    for tensor in plan.activations:
        if tensor in plan.constant_activations:
            continue
        source = producer.get(tensor)
        touching = [*([source] if source else []), *(r.name for r in readers.get(tensor, []))]
        variant = dataclasses.replace(
            plan,
            activations={k: v for k, v in plan.activations.items() if k != tensor},
            edges={
                (n, i): p
                for (n, i), p in plan.edges.items()
                if not any(r.name == n and r.input[i] == tensor for r in readers.get(tensor, []))
            },
        )
        op_type = op_types[source] if source is not None else "input"
        suspect = Suspect("activation", tensor, op_type, to_exclude(touching), empty)
        found.append((suspect, variant))
    for key, weight in plan.constants.items():
        if weight.params.dtype == "int32":
            continue  # a bias: its rounding is far below its layer's other errors
        users = list(dict.fromkeys(n for n, _ in weight.users))
        variant = dataclasses.replace(
            plan, constants={k: v for k, v in plan.constants.items() if k != key}
        )
        op_type = quantized[users[0]][0] if users and users[0] in quantized else "?"
        suspect = Suspect("weights", weight.source, op_type, to_exclude(users), empty)
        found.append((suspect, variant))
    return found


# -- running and scoring ----------------------------------------------------------------


def _outputs(
    model: onnx.ModelProto, names: list[str], batches: Iterable[Batch], workdir: Path | None
) -> list[list[np.ndarray]]:
    """The model's outputs, run after run, as calibration runs the data."""
    from drpaiq_core.calibrate import ActivationRunner

    with ActivationRunner(model, names, workdir=workdir) as runner:
        return [
            [np.asarray(value, dtype=np.float32) for value in run]
            for run in runner.outputs(batches)
        ]


def _class_scores(reference: list[list[np.ndarray]]) -> bool | None:
    """Whether the first output is probabilities (True) or logits (False) over classes;
    None when it is not ``[N, classes]``."""
    firsts = [run[0] for run in reference]
    if not firsts or any(f.ndim != 2 or f.shape[1] < 2 for f in firsts):
        return None
    return is_probabilities(np.concatenate(firsts))


def _score(
    reference: list[list[np.ndarray]],
    produced: list[list[np.ndarray]],
    signal: list[float],
    classes: bool | None,
) -> Score:
    noise = [0.0] * len(signal)
    divergence, images = 0.0, 0
    for ref_run, run in zip(reference, produced):
        for index, (ref, value) in enumerate(zip(ref_run, run)):
            noise[index] += float(np.sum(np.square(value.astype(np.float64) - ref)))
        if classes is not None:
            per_image = kl_per_image(
                log_probabilities(ref_run[0], classes), log_probabilities(run[0], classes)
            )
            divergence += float(np.sum(per_image))
            images += per_image.shape[0]
    return Score(sqnr_db(noise, signal), divergence / images if images else None)
