"""What a run did, for people (a table) and for tools (JSON)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drpaiq_core.select import NO_FLOAT_OUTPUT


@dataclass
class Summary:
    """The result of one quantization run.

    :ivar input_model: the FP32 model.
    :ivar output_model: the INT8 model written.
    :ivar calibrate_method: the calibrator used.
    :ivar samples: calibration samples seen (0 when every range came from a file).
    :ivar ranges_file: the ``--load-ranges`` file, when one was given.
    :ivar quantized: node name -> op type, for quantized nodes.
    :ivar float_nodes: node name -> (op type, why it stays float).
    :ivar rules: exclusion rule -> nodes it matched.
    :ivar size_before: FP32 file size in bytes.
    :ivar size_after: INT8 file size in bytes.
    :ivar opset: (before, after).
    :ivar notes: other remarks of the run.
    :ivar plan: the :class:`~drpaiq_core.plan.QuantPlan` that was applied.
    :ivar diagnosis: the :class:`~drpaiq_core.diagnose.Diagnosis`, when one was asked for.
    """

    input_model: Path
    output_model: Path
    calibrate_method: str
    samples: int = 0
    ranges_file: Path | None = None
    quantized: dict[str, str] = field(default_factory=dict)
    float_nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)
    size_before: int = 0
    size_after: int = 0
    opset: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)
    plan: Any = field(default=None, repr=False)
    diagnosis: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "input_model": str(self.input_model),
            "output_model": str(self.output_model),
            "calibrate_method": self.calibrate_method,
            "samples": self.samples,
            "ranges_file": None if self.ranges_file is None else str(self.ranges_file),
            "quantized_by_op_type": dict(sorted(Counter(self.quantized.values()).items())),
            "quantized_nodes": self.quantized,
            "float_nodes": {
                k: {"op_type": v[0], "reason": v[1]} for k, v in self.float_nodes.items()
            },
            "exclusion_rules": self.rules,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "size_ratio": round(self.size_after / self.size_before, 4)
            if self.size_before
            else None,
            "opset": list(self.opset),
            "notes": self.notes,
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "diagnosis": self.diagnosis.to_dict() if self.diagnosis is not None else None,
        }

    def to_json(self) -> str:
        """The summary as a JSON document."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_text(self) -> str:
        """A short human-readable report."""
        source = f"{self.calibrate_method}, {self.samples} samples"
        if self.ranges_file is not None and not self.samples:
            source = f"ranges from {self.ranges_file}"
        lines = [f"wrote {self.output_model} ({source})"]
        counts = Counter(self.quantized.values())
        lines.append(
            f"quantized {len(self.quantized)} node(s): "
            + ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))
        )
        # Nodes without float outputs (the shape arithmetic of a dynamic export) are
        # counted on one line: listed one by one they would hide the nodes that matter.
        integer = Counter(op for op, why in self.float_nodes.values() if why == NO_FLOAT_OUTPUT)
        listed = {k: v for k, v in self.float_nodes.items() if v[1] != NO_FLOAT_OUTPUT}
        if listed:
            lines.append(f"left in float {len(listed)} node(s):")
            for name, (op, reason) in listed.items():
                lines.append(f"  {name} ({op}): {reason}")
        if integer:
            lines.append(
                f"not quantized, {NO_FLOAT_OUTPUT}: {sum(integer.values())} node(s) ("
                + ", ".join(f"{op} {n}" for op, n in sorted(integer.items()))
                + ")"
            )
        for rule, nodes in self.rules.items():
            lines.append(f"rule {rule}: {len(nodes)} node(s)")
        ratio = self.size_after / self.size_before if self.size_before else 0.0
        lines.append(f"size {self.size_before:,} -> {self.size_after:,} bytes ({ratio:.2f}x)")
        lines.extend(self.notes)
        if self.diagnosis is not None:
            lines.append(self.diagnosis.to_text())
        return "\n".join(lines)
