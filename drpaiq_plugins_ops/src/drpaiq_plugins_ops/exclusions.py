"""Exclusion matchers: which nodes the user wants left in float, and why.

Three rule kinds, one matcher each:

* ``op_type`` -- every node of the given op types (``--operate_to_exclude``),
  compared case-insensitively;
* ``node_name`` -- the nodes of the given names (``--node_to_exclude``), exact;
* ``act_func_pattern`` -- chains of ops spelled out in a CSV file (advanced option
  ``exclude_act_func_dir``), one activation function per line, ``^OP`` marking a
  member of the chain that stays quantized.

Every matcher returns one :class:`~drpaiq_core.plugin_api.MatchReport` per rule the
user gave, also for a rule that matched nothing, so the engine can count and warn.
The module is imported when plugins register, so it imports onnx only inside functions.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import ExclusionMatcher, ExclusionRules, GraphView, MatchReport

if TYPE_CHECKING:
    import onnx

__all__ = [
    "EXCLUSION_MATCHERS",
    "PATTERN_OPTION",
    "ActFuncPatternMatcher",
    "NodeNameMatcher",
    "OpTypeMatcher",
    "Pattern",
    "PatternStep",
    "match_pattern",
    "read_pattern_file",
]

#: The advanced option that names the pattern CSV (the reference tool's spelling).
PATTERN_OPTION = "exclude_act_func_dir"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name; for an unnamed node the ``<OpType>_<index>`` name the engine
    gives it before matching, so a report never holds an empty name."""
    return node.name or f"{node.op_type}_{index}"


def _labels(graph: GraphView, indices: Iterable[int]) -> list[str]:
    """Names of the nodes at ``indices``, in graph order, each once."""
    nodes = graph.nodes
    return [_node_label(nodes[i], i) for i in sorted(set(indices))]


# ---------------------------------------------------------------------------
# By op type
# ---------------------------------------------------------------------------


class OpTypeMatcher(ExclusionMatcher):
    """Leaves every node of the given op types in float.

    Op types compare case-insensitively (``clip`` matches ``Clip``), because the
    reference tool accepted them so. An entry holding commas (``exp,add,log``) is
    split, so the rules work however the command line was tokenised. The rule text
    keeps the user's spelling: ``op type 'clip'``.
    """

    PLUGIN_NAME = "op_type"
    DESCRIPTION = "leave all nodes of the given op types in float (--operate_to_exclude)"

    def match(self, graph: GraphView, rules: ExclusionRules) -> list[MatchReport]:
        """One report per distinct op type given, listing the nodes of that type."""
        wanted: dict[str, str] = {}  # lower-case key -> first spelling given
        for op_type in _split_entries(rules.op_types, "--operate_to_exclude", "op type"):
            wanted.setdefault(op_type.lower(), op_type)
        by_type: dict[str, list[int]] = {}
        for index, node in enumerate(graph.nodes):
            by_type.setdefault(node.op_type.lower(), []).append(index)
        return [
            MatchReport(rule=f"op type {spelling!r}", nodes=_labels(graph, by_type.get(key, ())))
            for key, spelling in wanted.items()
        ]


def _split_entries(entries: Sequence[str], option: str, what: str) -> list[str]:
    """The non-empty comma-separated items of ``entries``, each stripped.

    An entry with nothing in it at all is a mistake worth one clear line rather than
    a silently ignored rule.
    """
    items: list[str] = []
    for entry in entries:
        parts = [part.strip() for part in entry.split(",")]
        parts = [part for part in parts if part]
        if not parts:
            raise UserError(
                f"{option}: empty {what} in {entry!r}; give {what}s separated by commas"
            )
        for part in parts:
            if not _IDENTIFIER.match(part):
                raise UserError(
                    f"{option}: {part!r} is not an ONNX {what} (letters, digits and _ only);"
                    f" separate several with commas, e.g. 'Exp,Add,Log'"
                )
        items.extend(parts)
    return items


# ---------------------------------------------------------------------------
# By node name
# ---------------------------------------------------------------------------


class NodeNameMatcher(ExclusionMatcher):
    """Leaves the nodes of the given names in float (exact, case-sensitive names, as
    a model viewer such as Netron shows them)."""

    PLUGIN_NAME = "node_name"
    DESCRIPTION = "leave the nodes of the given names in float (--node_to_exclude)"

    def match(self, graph: GraphView, rules: ExclusionRules) -> list[MatchReport]:
        """One report per distinct name given; empty when no node has that name."""
        by_name: dict[str, list[int]] = {}
        for index, node in enumerate(graph.nodes):
            by_name.setdefault(_node_label(node, index), []).append(index)
        reports: list[MatchReport] = []
        seen: set[str] = set()
        for name in _node_name_entries(rules.node_names, by_name):
            if name in seen:
                continue
            seen.add(name)
            # ONNX does not enforce unique names: a repeated name excludes every holder.
            reports.append(
                MatchReport(rule=f"node name {name!r}", nodes=_labels(graph, by_name.get(name, ())))
            )
        return reports


def _node_name_entries(entries: Sequence[str], known: Container[str]) -> list[str]:
    """The names in ``entries``: an entry that is not itself a node name but holds
    commas is the reference's ``A,B`` list, however the command line was tokenised."""
    names: list[str] = []
    for entry in entries:
        if entry in known or "," not in entry:
            parts = [entry]
        else:
            parts = [part.strip() for part in entry.split(",") if part.strip()]
        if not parts or not all(parts):
            raise UserError(
                f"--node_to_exclude: empty node name in {entry!r}; give node names"
                f" separated by commas, as a model viewer such as Netron shows them"
            )
        names.extend(parts)
    return names


# ---------------------------------------------------------------------------
# By activation-function pattern
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PatternStep:
    """One op of a pattern.

    :ivar op_type: as the file spells it.
    :ivar quantized: ``True`` when marked ``^``: part of the chain, yet quantized.
    """

    op_type: str
    quantized: bool = False


@dataclass(frozen=True)
class Pattern:
    """One line of a pattern file.

    :ivar steps: the ops in order from the input side.
    :ivar line: 1-based line number in the file.
    :ivar text: the line as written (stripped), for reports.
    """

    steps: tuple[PatternStep, ...]
    line: int
    text: str


class ActFuncPatternMatcher(ExclusionMatcher):
    """Leaves chains of ops given in a CSV file in float, minus their ``^`` members.

    A chain ``n1 -> n2 -> ... -> nk`` matches a pattern line of ``k`` op types when
    each ``n(i+1)`` reads an output of ``n(i)`` and the op types agree in order
    (case-insensitively). Other inputs do not matter: Mish's closing ``Mul`` also
    reads the chain's input, and still matches ``Softplus, Tanh, Mul``. Only nodes of
    matched chains are excluded, so an ``Add`` or ``Mul`` elsewhere stays quantized.
    The file comes from :attr:`ExclusionRules.pattern_file`, or else from the advanced
    option ``exclude_act_func_dir``.
    """

    PLUGIN_NAME = "act_func_pattern"
    DESCRIPTION = (
        "leave activation-function chains listed in a CSV file in float (exclude_act_func_dir)"
    )

    def match(self, graph: GraphView, rules: ExclusionRules) -> list[MatchReport]:
        """One report per pattern line of the file, named ``file:line 'text'``."""
        path = rules.pattern_file
        if path is None and rules.options.get(PATTERN_OPTION):
            path = Path(rules.options[PATTERN_OPTION])
        if path is None:
            return []
        patterns = read_pattern_file(path, extra_op_types=(n.op_type for n in graph.nodes))
        return [
            MatchReport(
                rule=f"{Path(path).name}:{pattern.line} {pattern.text!r}",
                nodes=_labels(graph, match_pattern(graph, pattern)),
            )
            for pattern in patterns
        ]


def read_pattern_file(path: Path | str, extra_op_types: Iterable[str] = ()) -> list[Pattern]:
    """Parse and check an activation-function pattern file.

    :param path: the CSV file (UTF-8, LF or CRLF line ends, an optional BOM).
    :param extra_op_types: op types known besides ONNX's own, e.g. the custom-domain
        ops of the model being quantized.
    :returns: the patterns, in file order.
    :raises UserError: naming the file and line, for a missing or unreadable file,
        text that is not UTF-8, a malformed line, an unknown op type, or a file
        without any pattern.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise UserError(
            f"{where}: activation-function pattern file not found; check the path given"
            f" to {PATTERN_OPTION}"
        )
    if path.is_dir():
        raise UserError(f"{where}: is a folder; {PATTERN_OPTION} takes the pattern CSV file itself")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{where}: cannot read the pattern file: {exc.strerror}") from exc
    try:
        # utf-8-sig: spreadsheet programs save UTF-8 CSV files with a byte-order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(
            f"{where}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column"
            f" {column}); save the file as UTF-8"
        ) from exc

    known = _known_op_types()
    extra = {op.lower(): op for op in extra_op_types}
    patterns: list[Pattern] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()  # also drops the \r of CRLF line ends
        if not stripped or stripped.startswith("#"):
            continue
        steps = _parse_line(stripped, f"{where}:{number}")
        if not steps:  # a spreadsheet's empty row: only commas
            continue
        for step in steps:
            key = step.op_type.lower()
            if key not in known and key not in extra:
                raise UserError(
                    f"{where}:{number}: unknown op type {step.op_type!r}"
                    f"{_suggestion(key, known, extra)}; use ONNX op type names as a model"
                    f" viewer shows them, e.g. 'Softplus, Tanh, ^Mul'"
                )
        patterns.append(Pattern(steps=steps, line=number, text=stripped))
    if not patterns:
        raise UserError(
            f"{where}: no pattern in the file; write one activation function per line,"
            f" e.g. 'Softplus, Tanh, ^Mul'"
        )
    return patterns


def _parse_line(line: str, where: str) -> tuple[PatternStep, ...]:
    """The steps of one non-blank, non-comment line; ``where`` is ``file:line``.

    Read as a CSV record, as spreadsheet programs write the file: a field may be
    quoted, and the empty fields they add to fill a row out to the longest row's
    length are dropped (an empty field between two op types is an error)."""
    fields = next(csv.reader([line], skipinitialspace=True), [])
    while fields and not fields[-1].strip():
        fields.pop()
    steps: list[PatternStep] = []
    for position, item in enumerate(fields, start=1):
        item = item.strip()
        quantized = item.startswith("^")
        op_type = item[1:].strip() if quantized else item
        if not item:
            raise UserError(
                f"{where}: op {position} of {line!r} is empty; separate op types by one"
                f" comma, e.g. 'Exp, Add, Log'"
            )
        if not op_type:
            raise UserError(
                f"{where}: op {position} of {line!r} is a '^' without an op type; put the"
                f" op type right after it, e.g. '^Mul' keeps that Mul quantized"
            )
        if not _IDENTIFIER.match(op_type):
            context = "" if op_type == line else f" in {line!r}"
            raise UserError(
                f"{where}: {op_type!r}{context} is not an op type name (letters, digits"
                f" and _ only); separate op types by commas, e.g. 'Softplus, Tanh, ^Mul'"
            )
        steps.append(PatternStep(op_type=op_type, quantized=quantized))
    if steps and all(step.quantized for step in steps):
        raise UserError(
            f"{where}: every op of {line!r} is marked '^' (quantized), so the line excludes"
            f" nothing; remove '^' from the ops to leave in float"
        )
    return tuple(steps)


@functools.lru_cache(maxsize=1)
def _known_op_types() -> dict[str, str]:
    """Lower-case name -> spelling of every op ONNX defines, in any of its domains."""
    import onnx.defs

    return {schema.name.lower(): schema.name for schema in onnx.defs.get_all_schemas_with_history()}


def _suggestion(key: str, *known: dict[str, str]) -> str:
    """``"; did you mean 'X'?"`` for the closest known op type, or nothing."""
    names: dict[str, str] = {}
    for table in known:
        names.update(table)
    close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def match_pattern(graph: GraphView, pattern: Pattern) -> set[int]:
    """Indices of the nodes ``pattern`` excludes: every node that sits at an unmarked
    position of some complete matching chain.

    Enumerating chains could blow up on wide fan-outs, so this works position by
    position instead: ``reach[i]`` holds the nodes that end a matching chain prefix of
    length ``i + 1``; a backward sweep keeps those that also start a matching suffix.
    A node may sit at several positions (``Add, Add`` on ``Add -> Add -> Add``); it is
    excluded when any of them is unmarked.
    """
    nodes = graph.nodes
    # Own index by tensor name: only graph.nodes is relied on, so any GraphView works
    # and node identity is the position in the graph.
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for tensor in node.input:
            if tensor:
                consumers.setdefault(tensor, []).append(index)

    def successors(index: int) -> set[int]:
        return {c for out in nodes[index].output if out for c in consumers.get(out, ())}

    kinds = [step.op_type.lower() for step in pattern.steps]
    reach: list[set[int]] = [
        {i for i, node in enumerate(nodes) if node.op_type.lower() == kinds[0]}
    ]
    for kind in kinds[1:]:
        reach.append(
            {
                nxt
                for prev in reach[-1]
                for nxt in successors(prev)
                if nodes[nxt].op_type.lower() == kind
            }
        )
    complete: list[set[int]] = [set() for _ in kinds]
    complete[-1] = reach[-1]
    for position in range(len(kinds) - 2, -1, -1):
        complete[position] = {i for i in reach[position] if successors(i) & complete[position + 1]}
    excluded: set[int] = set()
    for position, step in enumerate(pattern.steps):
        if not step.quantized:
            excluded |= complete[position]
    return excluded


#: The matchers this distribution registers, in report order.
EXCLUSION_MATCHERS: tuple[type[ExclusionMatcher], ...] = (
    OpTypeMatcher,
    NodeNameMatcher,
    ActFuncPatternMatcher,
)
