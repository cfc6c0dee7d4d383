"""The calibrate step of a run: measure the range of every selected tensor on the calibration data.

An augmented copy of the model exposes the selected tensors as graph outputs; one ONNX
Runtime session runs it batch by batch; every batch's values go straight into the
calibrator's per-tensor state and are dropped. Nothing per image is kept, so memory
does not grow with the number of calibration images.

The pieces are public so that calibration can be spread out later: collect
:class:`CalibrationStats` over disjoint parts of the data (other processes, other
machines) with :class:`ActivationRunner`, combine them with :func:`merge_stats`, and
:func:`finish` gives exactly the ranges of one pass over all the data.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drpaiq_core.background import OrderedWorker, Prefetch
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, Calibrator, Reader, TensorRange
from drpaiq_core.progress import Counter, progress
from drpaiq_core.write import EXTERNAL_DATA_THRESHOLD

if TYPE_CHECKING:
    import onnx
    import onnxruntime

log = logging.getLogger("drpaiq")

#: Models whose weights take at least this many bytes go to ONNX Runtime as a file with
#: external data (a protobuf message cannot be serialized into one buffer beyond 2 GB;
#: the threshold leaves 100 MB for the rest of the graph).
SESSION_FROM_FILE_BYTES = EXTERNAL_DATA_THRESHOLD

#: ONNX element type FLOAT.
_FLOAT = 1

#: Initializers of at least this many bytes reach ONNX Runtime as arrays rather than
#: inside the serialized model (small ones, such as shapes, stay in the model).
_IN_MEMORY_MIN_BYTES = 1024

#: ONNX element types handed over as NumPy arrays: those NumPy holds natively (float,
#: uint8, int8, uint16, int16, int32, int64, bool, float16, double, uint32, uint64).
#: Others (bfloat16, float8, strings) stay inside the serialized model.
_IN_MEMORY_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13})

#: Outputs per stacked run, in bytes: enough to spread the per-call cost of ONNX
#: Runtime and of folding each tensor over many samples (on the 32x32 sample model,
#: 8 MB runs calibrated 1.4x faster than single images; on a ResNet-18-sized model
#: with 5.4 MB of outputs per image, 32 MB runs of 6 images were 1.14x faster than
#: 8 MB runs of one), small enough that the few runs alive at a time (one in
#: inference, up to :data:`_PENDING_RUNS` waiting to be folded, one being folded) stay
#: a fixed amount of memory.
_GROUP_BYTES = 32 * 1024 * 1024

#: At most this many samples per stacked run. ONNX Runtime's own memory grows with the
#: run's size (on the 32x32 sample about twice the outputs'): with 16 samples per run,
#: calibrating 512 images peaked at 1.17-1.19x the memory of 32 images (which run in
#: fours, see :data:`_MIN_RUNS`), with 8 at 1.06-1.09x, for 5-15% more time.
_GROUP_SAMPLES = 8

#: A few images are spread over at least this many runs (when the reader tells how many
#: it has): the last run waits for all of its inputs to be read, and its fold overlaps
#: nothing, so short runs keep the pipeline's ends short. With 32 images of the 32x32
#: sample in runs of 4 instead of 16, MinMax calibration took 0.87-0.91x the FP32 pass
#: over the images instead of 0.97-1.04x, Percentile 1.07-1.08x instead of 1.20-1.26x.
_MIN_RUNS = 8

#: Batches, and bytes of decoded inputs, the reader may hold ahead of inference: several
#: stacked runs' worth, so that the next run's inputs are ready when a run ends (with 8
#: batches ahead the 32x32 sample calibrated 1.3x slower than with 64).
_PREFETCH_BATCHES = 64
_PREFETCH_BYTES = 64 * 1024 * 1024

#: Runs whose outputs may wait to be folded (each at most about :data:`_GROUP_BYTES`).
#: One is enough to keep the fold busy: with two, calibration was no faster (entropy,
#: 512 images, on the sample and on a ResNet-18-sized model), and the peak memory of
#: the sample at 512 images was 1.15x to 1.16x that at 32 instead of 1.10x to 1.11x.
_PENDING_RUNS = 1


@dataclass
class _Run:
    """One session call: the feeds (stacked when several batches were grouped), the
    outputs in the order of the fetched tensors, and how many samples it covers."""

    feeds: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    samples: int
    stacked: bool = False

    @staticmethod
    def joined(runs: list[_Run]) -> _Run:
        """Several runs of single batches folded as one (same values, same order)."""
        feeds = {name: np.concatenate([r.feeds[name] for r in runs]) for name in runs[0].feeds}
        outputs = [np.concatenate(parts) for parts in zip(*(r.outputs for r in runs))]
        return _Run(feeds, outputs, sum(r.samples for r in runs), stacked=True)


@dataclass
class CalibrationResult:
    """What calibration measured.

    :ivar ranges: tensor -> range, in the order the tensors were given.
    :ivar shapes: tensor -> observed shape; a dimension that differed between batches
        (the batch dimension of a short last batch or of stacked batches, a dynamic
        size) is ``None``.
    :ivar nonfinite: tensor -> number of NaN/Inf values left out (only tensors that had any).
    :ivar samples: samples seen in one pass over the data.
    """

    ranges: dict[str, TensorRange]
    shapes: dict[str, tuple[int | None, ...]]
    nonfinite: dict[str, int]
    samples: int


@dataclass
class CalibrationStats:
    """The calibrator states of all tensors after a pass over some of the data.

    :ivar states: tensor -> calibrator state.
    :ivar shapes: tensor -> observed shape (``None`` where batches disagreed).
    :ivar nonfinite: tensor -> NaN/Inf values left out (counted in pass 0).
    :ivar values: tensor -> values seen, finite or not (counted in pass 0).
    :ivar samples: samples seen in pass 0.
    """

    states: dict[str, Any]
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    samples: int = 0


def _merge_shape(
    a: tuple[int | None, ...] | None, b: tuple[int | None, ...] | None
) -> tuple[int | None, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    if len(a) != len(b):
        # A rank change between batches is a broken reader; keep the first shape.
        return a
    return tuple(x if x == y else None for x, y in zip(a, b))


def merge_stats(
    calibrator: Calibrator, a: CalibrationStats, b: CalibrationStats
) -> CalibrationStats:
    """Combine the stats of two disjoint parts of the data collected in the same pass
    (calibrator states with :meth:`Calibrator.merge`, counts added, shapes joined)."""
    names = list(a.states) + [name for name in b.states if name not in a.states]
    states = {}
    for name in names:
        if name in a.states and name in b.states:
            states[name] = calibrator.merge(a.states[name], b.states[name])
        else:
            states[name] = a.states[name] if name in a.states else b.states[name]
    shapes: dict[str, tuple[int | None, ...]] = {}
    for name in names:
        shape = _merge_shape(a.shapes.get(name), b.shapes.get(name))
        if shape is not None:
            shapes[name] = shape
    return CalibrationStats(
        states=states,
        shapes=shapes,
        nonfinite=_add_counts(a.nonfinite, b.nonfinite),
        values=_add_counts(a.values, b.values),
        samples=a.samples + b.samples,
    )


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for name, count in b.items():
        out[name] = out.get(name, 0) + count
    return out


class ActivationRunner:
    """One ONNX Runtime session over the model augmented to output ``tensors``.

    Use as a context manager (or call :meth:`close`): for models of 2 GB and more the
    augmented model lives in a temporary folder (under ``workdir`` when given) until then.

    :param model: the FP32 model (not modified; its weights must be loaded).
    :param tensors: names of float tensors to measure: node outputs or graph inputs.
    :param workdir: where a large augmented model may be written.
    """

    def __init__(
        self, model: onnx.ModelProto, tensors: Sequence[str], *, workdir: Path | None = None
    ) -> None:
        self.tensors = list(dict.fromkeys(tensors))
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._external_values: list[Any] = []
        initializers = {init.name for init in model.graph.initializer}
        self._input_names = [i.name for i in model.graph.input if i.name not in initializers]
        graph_inputs = set(self._input_names)
        produced = {out for node in model.graph.node for out in node.output if out}
        missing = [t for t in self.tensors if t not in graph_inputs and t not in produced]
        if missing:
            raise ValueError(
                f"cannot calibrate {missing[0]!r}: it is neither a graph input nor a node "
                "output of the model"
            )
        #: Tensors taken from the feeds (graph inputs) and fetched from the session.
        self.from_feeds = [t for t in self.tensors if t in graph_inputs]
        self.fetched = [t for t in self.tensors if t not in graph_inputs]
        self.session = self._open(model, workdir)
        self._expected = {i.name: (i.shape, i.type) for i in self.session.get_inputs()}
        # Batches can be stacked only when every input's first dimension is free.
        self._dynamic_batch = all(
            shape and not isinstance(shape[0], int) for shape, _ in self._expected.values()
        )
        #: Samples per session call; 0 until the first batch has been run.
        self._group_samples = 0
        #: Samples the reader says it holds (None when it cannot tell).
        self._expected_samples: int | None = None

    # -- session -----------------------------------------------------------------

    def _open(self, model: onnx.ModelProto, workdir: Path | None) -> onnxruntime.InferenceSession:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Fatal messages only: a failing batch comes back as an exception and is reported
        # in one line; ONNX Runtime's own log line would be a second report.
        options.log_severity_level = 4
        # Same values for the same data, whatever the thread scheduling.
        options.use_deterministic_compute = True
        # Idle ONNX Runtime threads sleep instead of spinning: the reader and the folds
        # run beside the session and need those cycles.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        existing = len(model.graph.output)
        known = {o.name for o in model.graph.output}
        types = _element_types(model)
        # The outputs are added to the caller's model only while it is serialized and
        # removed right after: a copy of a large model would double the memory.
        try:
            for name in self.fetched:
                if name not in known:
                    output = model.graph.output.add()
                    output.name = name
                    output.type.tensor_type.elem_type = types.get(name, _FLOAT)
            try:
                if _weight_bytes(model) < SESSION_FROM_FILE_BYTES:
                    source: str | bytes = self._in_memory(model, options)
                else:
                    source = self._write_external(model, workdir)
                session = onnxruntime.InferenceSession(
                    source, options, providers=["CPUExecutionProvider"]
                )
                self._external_values = []  # copied by ONNX Runtime by now
                return session
            except OSError as exc:
                raise UserError(
                    f"cannot stage the model for calibration in {workdir or 'the temp folder'}: "
                    f"{exc.strerror or exc}; free some disk space or choose another folder"
                ) from None
            except Exception as exc:
                raise UserError(
                    f"ONNX Runtime cannot load the model for calibration: {_first_line(exc)}"
                ) from None
        finally:
            del model.graph.output[existing:]

    def _in_memory(self, model: onnx.ModelProto, options: onnxruntime.SessionOptions) -> bytes:
        """The augmented model as bytes without its large weights, which go to ONNX
        Runtime as arrays (``add_external_initializers``): serializing tens of megabytes
        of weights only for ONNX Runtime to parse them again cost a ResNet-18 70 ms, more
        than a calibration image."""
        import onnx
        import onnxruntime
        from onnx import numpy_helper

        shell = shell_of(model)
        names: list[str] = []
        values: list[onnxruntime.OrtValue] = []
        for init in model.graph.initializer:
            tensor = shell.graph.initializer.add()
            if (
                not init.HasField("raw_data")
                or len(init.raw_data) < _IN_MEMORY_MIN_BYTES
                or init.data_type not in _IN_MEMORY_TYPES
            ):
                tensor.CopyFrom(init)
                continue
            tensor.name = init.name
            tensor.data_type = init.data_type
            tensor.dims.extend(init.dims)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            entry = tensor.external_data.add()
            entry.key = "location"
            entry.value = "drpaiq-in-memory"
            names.append(init.name)
            values.append(onnxruntime.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(init)))
        if names:
            options.add_external_initializers(names, values)
        # ONNX Runtime copies the arrays while the session is created; they live until then.
        self._external_values = values
        return shell.SerializeToString()

    def _write_external(self, model: onnx.ModelProto, workdir: Path | None) -> str:
        """Save the augmented model with every weight in one external data file, without
        copying the weights in memory; returns the model path."""
        import onnx

        self._tempdir = tempfile.TemporaryDirectory(
            prefix="drpaiq-calibrate-", dir=str(workdir) if workdir else None
        )
        folder = Path(self._tempdir.name)
        data_name = "augmented.onnx.data"
        shell = shell_of(model)
        with open(folder / data_name, "wb") as data:
            for init in model.graph.initializer:
                tensor = shell.graph.initializer.add()
                if init.data_type == onnx.TensorProto.STRING:
                    tensor.CopyFrom(init)
                    continue
                tensor.name = init.name
                tensor.data_type = init.data_type
                tensor.dims.extend(init.dims)
                raw = _raw_bytes(init)
                # Page-aligned offsets let ONNX Runtime map the weights directly.
                offset = -data.tell() % 4096 + data.tell()
                data.seek(offset)
                data.write(raw)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, entry in (
                    ("location", data_name),
                    ("offset", str(offset)),
                    ("length", str(len(raw))),
                ):
                    item = tensor.external_data.add()
                    item.key = key
                    item.value = entry
        path = folder / "augmented.onnx"
        path.write_bytes(shell.SerializeToString())
        return str(path)

    def close(self) -> None:
        """Release the session and remove the temporary augmented model, if any."""
        self.session = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> ActivationRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- passes ------------------------------------------------------------------

    def new_stats(self, calibrator: Calibrator) -> CalibrationStats:
        """Empty stats: a fresh calibrator state per tensor."""
        return CalibrationStats(states={name: calibrator.new_state() for name in self.tensors})

    def run_pass(
        self,
        reader: Reader,
        calibrator: Calibrator,
        stats: CalibrationStats,
        pass_index: int = 0,
        *,
        quiet: bool = False,
        desc: str | None = None,
        read_ahead: Prefetch[Batch] | None = None,
    ) -> CalibrationStats:
        """Run the reader's data once through the model and fold every tensor's finite
        values into ``stats`` (updated in place and returned).

        :param read_ahead: the reader's batches, already being read ahead (see
            :func:`read_ahead_of`); by default the reader is started here.

        :raises UserError: when ONNX Runtime fails on a batch (naming the inputs and the
            sample), when the reader yields nothing, or when a later pass yields a
            different number of samples than pass 0.
        """
        total = _reader_length(reader)
        self._expected_samples = total
        label = desc or f"calibrate pass {pass_index + 1}/{calibrator.PASSES}"
        seen = 0

        def fold(run: _Run) -> None:
            self._fold(run, calibrator, stats, pass_index)

        # Decoding, inference and folding overlap: the reader runs ahead in one thread,
        # the folds follow in order in another (same results as one after the other).
        with (
            Counter(total=total, desc=label, unit="img", quiet=quiet) as counter,
            read_ahead or read_ahead_of(reader) as batches,
            OrderedWorker(fold, depth=_PENDING_RUNS) as folder,
        ):
            for run in self._runs(iter(batches)):
                folder.submit(run)
                seen += run.samples
                counter.advance(run.samples)
        if seen == 0:
            name = getattr(reader, "PLUGIN_NAME", type(reader).__name__)
            raise UserError(
                f"the calibration reader {name!r} yielded no samples; check the calibration "
                "dataset (folder, file types) and size_limit"
            )
        if pass_index == 0:
            stats.samples += seen
        elif seen != stats.samples:
            raise UserError(
                f"the calibration reader yielded {seen} samples in pass {pass_index + 1} but "
                f"{stats.samples} in pass 1; a reader must yield the same data on every pass"
            )
        return stats

    def outputs(self, batches: Iterable[Batch]) -> Iterator[list[np.ndarray]]:
        """The fetched tensors for ``batches``, run after run: small batches are stacked
        as in a calibration pass, so two runners over models with the same outputs run
        the same batches together."""
        for run in self._runs(iter(batches)):
            yield run.outputs

    def _runs(self, batches: Iterator[Batch]) -> Iterator[_Run]:
        """The batches run through the session, in order.

        Small batches of a model whose batch dimension is dynamic are stacked into one
        run of about :data:`_GROUP_BYTES` of outputs: one session call and one fold per
        group instead of per image (a large share of the time for small models). The
        first batch runs alone and sets the group size from its output size. Only the
        current group is alive at any time, whatever the number of batches.
        """
        group: list[tuple[int, Batch]] = []
        count = 0
        for number, batch in enumerate(batches):
            self._check_feeds(batch.feeds, batch, number)
            if group and not _stackable(group[-1][1], batch):
                yield self._run_group(group)
                group, count = [], 0
            group.append((number, batch))
            count += batch_samples(batch.feeds)
            if count >= self._group_samples:
                yield self._run_group(group)
                group, count = [], 0
        if group:
            yield self._run_group(group)

    def _run_group(self, group: list[tuple[int, Batch]]) -> _Run:
        if len(group) == 1:
            number, batch = group[0]
            run = _Run(batch.feeds, self._run(batch, number), batch_samples(batch.feeds))
            if self._group_samples == 0:
                self._group_samples = self._group_size(run)
            return run
        feeds = {
            name: np.concatenate([batch.feeds[name] for _, batch in group])
            for name in group[0][1].feeds
        }
        samples = sum(batch_samples(batch.feeds) for _, batch in group)
        try:
            outputs = list(self.session.run(self.fetched, feeds)) if self.fetched else []
        except Exception:
            outputs = None
        # Every output must keep the samples along dimension 0; otherwise the model is
        # not batch-safe (a Reshape that fixes the batch to 1, ...) and its stacked
        # outputs cannot be trusted: run one batch at a time from here on.
        if outputs is None or any(np.ndim(o) == 0 or len(o) != samples for o in outputs):
            self._group_samples = 1
            runs = [self._run_group([item]) for item in group]
            return _Run.joined(runs)
        return _Run(feeds, outputs, samples, stacked=True)

    def _group_size(self, run: _Run) -> int:
        """Samples per run: as many as fit :data:`_GROUP_BYTES` of outputs, at most
        :data:`_GROUP_SAMPLES`; 1 when the model's batch dimension is fixed."""
        if not self._dynamic_batch or run.samples == 0:
            return 1
        per_sample = sum(o.nbytes for o in run.outputs) / run.samples
        size = min(_GROUP_SAMPLES, _GROUP_BYTES // max(per_sample, 1.0))
        if self._expected_samples:
            size = min(size, -(-self._expected_samples // _MIN_RUNS))
        return int(max(1, size))

    def _run(self, batch: Batch, number: int) -> list[np.ndarray]:
        feeds = batch.feeds
        if not self.fetched:
            return []
        try:
            return list(self.session.run(self.fetched, feeds))
        except Exception as exc:
            raise UserError(
                f"ONNX Runtime failed on calibration {_where(batch, number)}: "
                f"{_first_line(exc)} (fed {_describe_feeds(feeds)}; the model expects "
                f"{self._describe_expected()}); check the reader's layout, size and "
                "normalization for this model"
            ) from None

    def _fold(
        self, run: _Run, calibrator: Calibrator, stats: CalibrationStats, pass_index: int
    ) -> None:
        pairs = list(zip(self.fetched, run.outputs))
        pairs += [(name, run.feeds[name]) for name in self.from_feeds]
        for name, raw in pairs:
            values = np.asarray(raw, dtype=np.float32)
            shape: tuple[int | None, ...] = values.shape
            if run.stacked and shape:
                # A stacked run's first dimension is the group's, not the reader's.
                shape = (None, *shape[1:])
            known = stats.shapes.get(name)
            if known != shape:
                stats.shapes[name] = _merge_shape(known, shape) or shape
            if pass_index == 0:
                stats.values[name] = stats.values.get(name, 0) + int(values.size)
            # One cheap reduction tells whether any value is NaN or Inf (the sum is then
            # not finite; so it is, rarely, for huge finite values: the mask decides).
            # Inf - Inf and overflow are expected here, not worth a RuntimeWarning.
            with np.errstate(invalid="ignore", over="ignore"):
                total = np.add.reduce(values, axis=None)
            if not np.isfinite(total):
                finite = np.isfinite(values)
                bad = int(values.size - np.count_nonzero(finite))
                if bad:
                    if pass_index == 0:
                        stats.nonfinite[name] = stats.nonfinite.get(name, 0) + bad
                    values = values[finite]
            stats.states[name] = calibrator.collect(stats.states[name], values, pass_index)

    def _check_feeds(self, feeds: dict[str, np.ndarray], batch: Batch, number: int) -> None:
        missing = [name for name in self._input_names if name not in feeds]
        unknown = [name for name in feeds if name not in self._expected]
        if missing or unknown:
            problem = (
                f"no value for model input {missing[0]!r}"
                if missing
                else f"a value for {unknown[0]!r}, which is not a model input"
            )
            raise UserError(
                f"calibration {_where(batch, number)} has {problem} (the model's inputs: "
                f"{', '.join(self._input_names)}); check that the reader matches the model"
            )

    def _describe_expected(self) -> str:
        return ", ".join(
            f"{name} {_shape_text(shape)} {kind}" for name, (shape, kind) in self._expected.items()
        )


def read_ahead_of(reader: Reader) -> Prefetch[Batch]:
    """Start reading ``reader``'s batches in a background thread, a few runs' worth
    ahead (:data:`_PREFETCH_BATCHES`, :data:`_PREFETCH_BYTES`); a context manager that
    stops the thread on leaving."""
    return Prefetch(
        batches_of(reader), depth=_PREFETCH_BATCHES, max_bytes=_PREFETCH_BYTES, size=_feed_bytes
    )


def finish(
    calibrator: Calibrator,
    stats: CalibrationStats,
    *,
    quiet: bool = False,
    debug_dir: Path | None = None,
) -> CalibrationResult:
    """Compute every tensor's range from the final ``stats``, warn once per tensor that
    had NaN/Inf values, and let the calibrator write its debug output."""
    ranges: dict[str, TensorRange] = {}
    for name in progress(
        list(stats.states),
        total=len(stats.states),
        desc="searching ranges",
        unit="tensor",
        quiet=quiet,
    ):
        ranges[name] = calibrator.compute(stats.states[name])
        _check_range(calibrator, name, ranges[name])
    nonfinite = {name: count for name, count in stats.nonfinite.items() if count}
    for name, count in nonfinite.items():
        total = stats.values.get(name, count)
        # With no finite value at all the tensor has no range: say what it gets instead.
        fallback = " (all of them: it gets the placeholder range [0, 0])" if count >= total else ""
        log.warning(
            f"tensor {name!r}: {count} of {total} calibration values were NaN or Inf and "
            f"were left out{fallback}; check the model and the input normalization"
        )
    if debug_dir is not None:
        try:
            debug_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create debug folder {debug_dir}: {exc.strerror or exc}"
            ) from None
    calibrator.report(ranges, debug_dir)
    return CalibrationResult(
        ranges=ranges, shapes=dict(stats.shapes), nonfinite=nonfinite, samples=stats.samples
    )


#: The largest float32: a range beyond it has no finite float32 scale.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_range(calibrator: Calibrator, name: str, found: TensorRange) -> None:
    """Refuse a range that would give a NaN or Inf scale (the core hands calibrators
    finite values only, so such a range is a calibrator's bug)."""
    low, high = float(found.rmin), float(found.rmax)
    if all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in (low, high)):
        return
    raise UserError(
        f"calibrator {calibrator.PLUGIN_NAME!r} gave tensor {name!r} the range "
        f"[{low:g}, {high:g}], which no finite float32 scale can represent; nothing was "
        "written (a bug of the calibrator: report it, or choose another --calibrate_method)"
    )


def calibrate(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    reader: Reader,
    calibrator: Calibrator,
    *,
    quiet: bool = False,
    debug_dir: Path | None = None,
    workdir: Path | None = None,
) -> CalibrationResult:
    """Measure the range of each of ``tensors`` over the reader's data.

    Runs ``calibrator.PASSES`` passes over ``reader.batches()`` with one ONNX Runtime
    session, folding each batch into the calibrator's per-tensor states, then computes
    the ranges and calls ``calibrator.report(ranges, debug_dir)``.

    :param model: the FP32 model (left unchanged).
    :param tensors: float tensors to measure (node outputs or graph inputs).
    :param reader: the calibration data.
    :param calibrator: the statistic, already configured with its options.
    :param quiet: no progress bars.
    :param debug_dir: where the calibrator may write debug output.
    :param workdir: where a model of 2 GB or more is staged for ONNX Runtime.
    :raises UserError: no samples, or ONNX Runtime failing on the data.
    """
    # The reader starts on the first images while ONNX Runtime builds the session.
    first_pass = read_ahead_of(reader)
    with first_pass, ActivationRunner(model, tensors, workdir=workdir) as runner:
        stats = runner.new_stats(calibrator)
        for pass_index in range(calibrator.PASSES):
            if pass_index:
                stats.states = {
                    name: calibrator.next_pass(state, pass_index)
                    for name, state in stats.states.items()
                }
            runner.run_pass(
                reader,
                calibrator,
                stats,
                pass_index,
                quiet=quiet,
                read_ahead=None if pass_index else first_pass,
            )
    return finish(calibrator, stats, quiet=quiet, debug_dir=debug_dir)


# -- helpers ---------------------------------------------------------------------------


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types known from the model's value infos (float assumed elsewhere)."""
    types = {}
    for value in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        elem = value.type.tensor_type.elem_type
        if elem:
            types[value.name] = elem
    return types


def _weight_bytes(model: onnx.ModelProto) -> int:
    """The bytes of the model's initializers and Constant tensors: nearly all of its
    serialized size, and much cheaper to get than ``ByteSize()`` on a large model."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(attr.t for attr in node.attribute if attr.HasField("t"))
    return sum(len(t.raw_data) if t.HasField("raw_data") else t.ByteSize() for t in tensors)


def shell_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its initializers (everything else is copied)."""
    import onnx

    shell = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _copy_field(shell, descriptor, value)
    for descriptor, value in model.graph.ListFields():
        if descriptor.name != "initializer":
            _copy_field(shell.graph, descriptor, value)
    return shell


def _copy_field(target: Any, descriptor: Any, value: Any) -> None:
    # protobuf 5+ has is_repeated; older releases only the label.
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is None:
        repeated = descriptor.label == descriptor.LABEL_REPEATED
    if repeated:
        getattr(target, descriptor.name).extend(value)
    elif descriptor.type == descriptor.TYPE_MESSAGE:
        getattr(target, descriptor.name).CopyFrom(value)
    else:
        setattr(target, descriptor.name, value)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    # ONNX raw data is little-endian whatever the machine.
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _reader_length(reader: Reader) -> int | None:
    try:
        return len(reader) or None
    except TypeError:
        return None


def batches_of(reader: Reader) -> Iterator[Batch]:
    """The reader's batches, each as a :class:`Batch` (a reader may yield plain dicts)."""
    for batch in reader.batches():
        yield batch if isinstance(batch, Batch) else Batch(feeds=dict(batch))


def _feed_bytes(batch: Batch) -> int:
    return sum(int(np.asarray(value).nbytes) for value in batch.feeds.values())


def _stackable(a: Batch, b: Batch) -> bool:
    """Whether ``b`` can be stacked after ``a``: same inputs, same per-sample shapes and
    types."""
    if a.feeds.keys() != b.feeds.keys():
        return False
    for name, value in a.feeds.items():
        other = b.feeds[name]
        if np.ndim(value) == 0 or np.shape(value)[1:] != np.shape(other)[1:]:
            return False
        if np.asarray(value).dtype != np.asarray(other).dtype:
            return False
    return True


def batch_samples(feeds: dict[str, np.ndarray]) -> int:
    """How many samples a batch's feeds hold (the first input's first dimension)."""
    first = next(iter(feeds.values()), None)
    if first is None:
        return 0
    array = np.asarray(first)
    return int(array.shape[0]) if array.ndim else 1


def _where(batch: Batch, number: int) -> str:
    if batch.sources:
        if len(batch.sources) == 1:
            return f"sample {batch.sources[0]}"
        return f"batch {number + 1} ({batch.sources[0]} .. {batch.sources[-1]})"
    return f"batch {number + 1}"


def _describe_feeds(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(
        f"{name} {_shape_text(np.shape(value))} {np.asarray(value).dtype}"
        for name, value in feeds.items()
    )


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None or isinstance(d, str) else str(d) for d in shape) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    # ONNX Runtime prefixes its messages with "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ".
    parts = line.split(" : ", 3)
    if line.startswith("[ONNXRuntimeError]") and len(parts) == 4:
        line = parts[3]
    return line
