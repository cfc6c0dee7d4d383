"""Where calibration (and evaluation) data comes from: choosing and checking the reader.

:func:`open_reader` picks, in this order:

1. ``config.reader_object``: a :class:`~drpaiq_core.plugin_api.Reader` is used as is;
   any object with ``get_next()`` (ONNX Runtime's ``CalibrationDataReader`` protocol,
   e.g. a reader written for the reference tool) is adapted;
2. ``config.datareader_path`` (the reference's ``--datareader_path``): the user's
   ``.py`` file is imported **at run time, which runs the code it contains**, and its
   reader class is constructed as the reference does,
   ``Cls(calibrate_dataset, norm_mean, norm_std, model_path)``; nothing imports the
   file at any other moment;
3. ``config.tvm``: the ``tvm`` reader plugin;
4. the reader plugin ``config.reader`` names (``nchw_image`` when None).

Every reader comes back wrapped in a check of each batch against the model's inputs,
so a reader that yields the wrong input name, dtype, rank or size fails with one line
naming the input, what the model expects and what the reader gave.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from drpaiq_core.errors import UserError
from drpaiq_core.load import model_inputs
from drpaiq_core.plugin_api import Batch, InputSpec, Reader, ReaderContext

if TYPE_CHECKING:
    import onnx

    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.plugins import PluginHost

log = logging.getLogger("drpaiq")

#: The reader used when none is named.
DEFAULT_READER = "nchw_image"
#: The reference tool's default calibration folder.
DEFAULT_CALIBRATE_DATASET = Path("calibrate_images")
#: Class names a ``--datareader_path`` file is searched for first.
REFERENCE_CLASS_NAMES = ("NCHWDataReader", "NHWCDataReader")


def warn_user(message: str) -> None:
    """The ``ReaderContext.warn`` drpaiq hands readers: one warning line on stderr.

    Readers warn while a progress bar is drawn; tqdm's external write mode lifts the
    bars off the line first, so the warning gets a line of its own.
    """
    from drpaiq_core.progress import bar_class

    bars = bar_class()
    if bars is None:
        log.warning(message)
        return
    with bars.external_write_mode(file=sys.stderr):
        log.warning(message)


def reader_context(
    config: QuantizeConfig,
    inputs: Sequence[InputSpec],
    model_path: Path | None,
    *,
    labeled: bool = False,
    dataset: Path | None = None,
) -> ReaderContext:
    """The :class:`ReaderContext` for ``config``'s options and the model's inputs."""
    return ReaderContext(
        dataset=dataset or config.calibrate_dataset or DEFAULT_CALIBRATE_DATASET,
        model_path=model_path,
        inputs=list(inputs),
        norm_mean=config.norm_mean,
        norm_std=config.norm_std,
        size_limit=config.size_limit,
        batch_size=config.batch_size,
        input_shape=config.input_shape,
        labeled=labeled,
        options=dict(config.options),
        warn=warn_user,
    )


def open_reader(
    config: QuantizeConfig,
    host: PluginHost,
    model: onnx.ModelProto,
    model_path: Path,
    *,
    labeled: bool = False,
    dataset: Path | None = None,
) -> Reader:
    """The reader for a run, wrapped in a check of every batch against ``model``.

    :param config: the run's options (see the module doc for the order of choice).
    :param host: the plugin host whose reader registry is used.
    :param model: the model the feeds are for (its inputs are checked).
    :param model_path: the model file, handed to readers that read it themselves.
    :param labeled: ask for class labels (evaluation).
    :param dataset: the data folder, instead of ``config.calibrate_dataset``.
    :raises UserError: unknown reader, bad data folder, broken datareader file, ...
    """
    inputs = model_inputs(model)
    context = reader_context(config, inputs, model_path, labeled=labeled, dataset=dataset)
    if config.reader_object is not None:
        inner = adapt_reader_object(config.reader_object, size_limit=config.size_limit)
    elif config.datareader_path is not None:
        if config.tvm:
            raise UserError(
                "--tvm uses the built-in TVM data reader; do not give --datareader_path with it"
            )
        inner = reader_from_file(Path(config.datareader_path), config, context, model_path)
    elif config.tvm:
        if config.reader is not None and config.reader.lower() != "tvm":
            raise UserError(
                f"--tvm uses the built-in TVM data reader; drop --reader {config.reader}"
            )
        inner = make_reader(host, "tvm", context)
    else:
        inner = make_reader(host, config.reader or DEFAULT_READER, context)
    return ValidatingReader(inner, inputs)


def make_reader(host: PluginHost, name: str, context: ReaderContext) -> Reader:
    """Construct the registered reader ``name`` (an unknown name lists the installed ones)."""
    cls = host.readers.get(name)
    return cls(context)


def describe_reader(reader: Any) -> str:
    """A short name of a reader for messages (``reader nchw_image``)."""
    if isinstance(reader, ValidatingReader):
        return reader.describe
    if isinstance(reader, GetNextReader):
        return reader.describe
    name = getattr(type(reader), "PLUGIN_NAME", None)
    return f"reader {name}" if name else f"reader {type(reader).__name__}"


# ---------------------------------------------------------------------------
# Checking every batch against the model
# ---------------------------------------------------------------------------


def _shape_text(shape: Sequence[int | None]) -> str:
    return (
        "["
        + ",".join(("N" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(shape))
        + "]"
    )


def check_feeds(feeds: Any, inputs: Sequence[InputSpec], describe: str) -> None:
    """Raise a :class:`UserError` unless ``feeds`` gives every model input a numpy
    array of the right dtype, rank and fixed dimensions (and nothing else)."""
    if not isinstance(feeds, Mapping):
        raise UserError(
            f"{describe} yielded {type(feeds).__name__}; feeds must be a dict "
            "input name -> numpy array"
        )
    names = [spec.name for spec in inputs]
    for key in feeds:
        if key not in names:
            raise UserError(
                f"{describe} gave data for {key!r}, which is not a model input "
                f"(model inputs: {', '.join(names)})"
            )
    for spec in inputs:
        expected = f"{spec.dtype} {_shape_text(spec.shape)}"
        if spec.name not in feeds:
            given = ", ".join(repr(k) for k in feeds) or "nothing"
            raise UserError(
                f"{describe} gave no data for model input {spec.name!r} (expected {expected}; "
                f"it gave {given})"
            )
        value = feeds[spec.name]
        if not isinstance(value, np.ndarray):
            raise UserError(
                f"{describe}: input {spec.name!r} must be a numpy array ({expected}); got "
                f"{type(value).__name__}"
            )
        got = f"{value.dtype} [{','.join(str(d) for d in value.shape)}]"
        if value.dtype != spec.dtype:
            hint = f"; convert with .astype(np.{spec.dtype})" if value.dtype.kind in "fiu" else ""
            raise UserError(f"{describe}: input {spec.name!r} expected {expected}, got {got}{hint}")
        if not spec.shape:
            continue
        if value.ndim != len(spec.shape):
            raise UserError(
                f"{describe}: input {spec.name!r} expected {expected} ({len(spec.shape)} "
                f"dimensions), got {got}"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, value.shape)):
            if want is not None and want != have:
                raise UserError(
                    f"{describe}: input {spec.name!r} expected {expected}, got {got} "
                    f"(dimension {axis} is {have}, the model wants {want})"
                    + _layout_hint(spec.shape, value.shape)
                )


def _layout_hint(want: Sequence[int | None], have: Sequence[int]) -> str:
    if len(want) != 4 or len(have) != 4:
        return ""
    if want[1] == 3 and have[3] == 3:
        return (
            "; the data is channels-last (NHWC) but the model wants channels-first (NCHW): "
            "transpose it, or read images with nchw_image (--nchw)"
        )
    if want[3] == 3 and have[1] == 3:
        return (
            "; the data is channels-first (NCHW) but the model wants channels-last (NHWC): "
            "transpose it, or read images with nhwc_image (--nhwc)"
        )
    return ""


class ValidatingReader(Reader):
    """Wraps a reader; checks each batch against the model's inputs and that the
    reader yields anything at all. Other attributes are looked up on the inner
    reader (e.g. ``class_names`` of the image readers)."""

    PLUGIN_NAME = "validated"

    def __init__(self, inner: Reader, inputs: Sequence[InputSpec]) -> None:
        super().__init__(inner.context)
        self.inner = inner
        self.inputs = list(inputs)
        self.describe = describe_reader(inner)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set: avoid recursion during construction
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def batches(self) -> Iterator[Batch]:
        """The inner reader's batches, each checked before it is handed on."""
        count = 0
        for batch in self.inner.batches():
            if not isinstance(batch, Batch):
                raise UserError(
                    f"{self.describe} yielded {type(batch).__name__}, not a drpaiq Batch"
                )
            check_feeds(batch.feeds, self.inputs, self.describe)
            count += 1
            yield batch
        if count == 0:
            raise UserError(f"{self.describe} yielded no data; check the data folder or file")


class SpreadReader(Reader):
    """About ``samples`` of a reader's samples, in whole batches spread evenly over its
    data, so that a folder sorted by class does not give its first class only. The same
    batches on every pass; all of them when the reader holds no more than ``samples``
    or cannot tell how many it holds.

    The first pass reads the inner reader until the last pick (its batches come one
    after the other). When the picked batches take at most ``keep_bytes``, they are
    kept, and later passes hand them on without reading again: a pass over 128 picked
    images then decodes none of the other 872 of 1,000.
    """

    PLUGIN_NAME = "spread"

    def __init__(self, inner: Reader, samples: int, keep_bytes: int = 0) -> None:
        super().__init__(inner.context)
        self.inner = inner
        self.samples = samples
        self.keep_bytes = keep_bytes
        self._kept: list[Batch] | None = None
        try:
            self.total = len(inner)
        except TypeError:
            self.total = 0

    def __len__(self) -> int:
        return min(self.samples, self.total) if self.total else self.samples

    def batches(self) -> Iterator[Batch]:
        """The picked batches (see :func:`spread_batches`)."""
        from drpaiq_core.calibrate import batches_of

        if self._kept is not None:
            yield from self._kept
            return
        kept: list[Batch] | None = [] if self.keep_bytes > 0 else None
        held = 0
        for batch in spread_batches(batches_of(self.inner), self.total, self.samples):
            if kept is not None:
                held += sum(int(np.asarray(v).nbytes) for v in batch.feeds.values())
                if held <= self.keep_bytes:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept


def spread_batches(batches: Iterable[Batch], total: int, samples: int) -> Iterator[Batch]:
    """About ``samples`` of the ``total`` samples in ``batches``, in whole batches: one
    wherever the samples seen reach the next even share of the data (``taken * total /
    samples``); all of them when ``total`` is at most ``samples`` or unknown (0)."""
    from drpaiq_core.calibrate import batch_samples

    seen = taken = 0
    for batch in batches:
        size = batch_samples(batch.feeds)
        if total <= samples or seen * samples >= taken * total:
            yield batch
            taken += size
            if taken >= samples:
                return
        seen += size


# ---------------------------------------------------------------------------
# Objects with get_next(): ONNX Runtime's CalibrationDataReader protocol
# ---------------------------------------------------------------------------


def adapt_reader_object(obj: Any, *, size_limit: int = 0) -> Reader:
    """A :class:`Reader` for ``obj``: a Reader as is, an object with ``get_next()``
    adapted; anything else is a :class:`UserError`."""
    if isinstance(obj, Reader):
        return obj
    if inspect.isclass(obj):
        raise UserError(
            f"datareader {obj.__name__} is a class; pass an instance, e.g. "
            f"{obj.__name__}(calibration_image_folder, norm_mean, norm_std, model_path)"
        )
    if not callable(getattr(obj, "get_next", None)):
        raise UserError(
            f"datareader {type(obj).__name__} has no get_next() method; pass a "
            "CalibrationDataReader (get_next() returns a dict input name -> array, then None) "
            "or a drpaiq Reader"
        )
    _apply_size_limit(obj, size_limit)
    return GetNextReader(obj, size_limit=size_limit)


def _apply_size_limit(obj: Any, size_limit: int) -> None:
    # The reference's readers cap their images with a size_limit attribute.
    if size_limit > 0 and hasattr(obj, "size_limit"):
        obj.size_limit = size_limit


def _source_file(obj: Any) -> Path | None:
    try:
        name = inspect.getsourcefile(type(obj))
    except (TypeError, OSError):
        return None
    return Path(name) if name else None


class GetNextReader(Reader):
    """Adapts a ``get_next()`` reader: each dict it returns is one batch.

    Later passes (two-pass calibrators) start again with the object's ``rewind()`` if
    it has one, else with a fresh object from ``factory`` (the ``--datareader_path``
    class is simply constructed again); failing both, the first pass is recorded in a
    temporary folder and replayed from disk, so memory stays flat.

    :param obj: the reader object.
    :param factory: makes a fresh reader object for a new pass.
    :param user_file: the file the reader's code is in, for error locations.
    :param size_limit: stop after this many samples (0 = all).
    """

    PLUGIN_NAME = "get_next"

    def __init__(
        self,
        obj: Any,
        *,
        factory: Callable[[], Any] | None = None,
        user_file: Path | None = None,
        size_limit: int = 0,
    ) -> None:
        super().__init__(ReaderContext(dataset=None, model_path=None, inputs=()))
        self.obj = obj
        self._factory = factory
        self._file = user_file or _source_file(obj)
        self._size_limit = size_limit
        self._passes = 0
        self._count: int | None = None
        self._rewinds = callable(getattr(obj, "rewind", None))
        self._record = not self._rewinds and factory is None
        self._recorded: list[list[tuple[str, Path]]] | None = None
        self._record_dir: tempfile.TemporaryDirectory[str] | None = None
        self.describe = f"datareader {type(obj).__name__}"

    def __len__(self) -> int:
        if self._count is not None:
            return self._count
        try:
            count = len(self.obj)
        except Exception:  # ONNX Runtime's base class raises NotImplementedError
            return 0
        if self._size_limit > 0:
            count = min(count, self._size_limit)
        return count

    def batches(self) -> Iterator[Batch]:
        """One batch per ``get_next()`` result, until it returns None."""
        self._passes += 1
        if self._passes > 1 and self._recorded is not None:
            yield from self._replay()
            return
        obj = self.obj
        if self._passes > 1:
            if self._rewinds:
                self._call(obj.rewind, "rewind()")
            elif self._factory is not None:
                obj = self._factory()
        record = self._record and self._passes == 1
        recorded: list[list[tuple[str, Path]]] = []
        seen = 0
        while self._size_limit <= 0 or seen < self._size_limit:
            feeds = self._call(obj.get_next, "get_next()")
            if feeds is None:
                break
            if not isinstance(feeds, Mapping):
                raise UserError(
                    f"{self.describe}.get_next() returned {type(feeds).__name__}; it must "
                    "return a dict input name -> numpy array, or None when done"
                )
            feeds = dict(feeds)
            count = _sample_count(feeds)
            if self._size_limit > 0 and seen + count > self._size_limit:
                keep = self._size_limit - seen
                feeds = {k: v[:keep] if isinstance(v, np.ndarray) else v for k, v in feeds.items()}
                count = keep
            seen += count
            yield Batch(feeds=feeds)
            if record:
                recorded.append(self._save(feeds, len(recorded)))
        self._count = seen
        if record:
            self._recorded = recorded

    def _call(self, method: Callable[[], Any], action: str) -> Any:
        try:
            return method()
        except UserError:
            raise
        except Exception as exc:
            raise user_code_error(exc, self._file, f"{self.describe}.{action}") from None

    def _save(self, feeds: dict[str, Any], index: int) -> list[tuple[str, Path]]:
        if self._record_dir is None:
            self._record_dir = tempfile.TemporaryDirectory(prefix="drpaiq-replay-")
        folder = Path(self._record_dir.name)
        saved = []
        for position, (name, value) in enumerate(feeds.items()):
            path = folder / f"{index:08d}_{position:03d}.npy"
            np.save(path, value, allow_pickle=False)
            saved.append((name, path))
        return saved

    def _replay(self) -> Iterator[Batch]:
        assert self._recorded is not None
        for entries in self._recorded:
            yield Batch(feeds={name: np.load(path) for name, path in entries})


def _sample_count(feeds: Mapping[str, Any]) -> int:
    for value in feeds.values():
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            return int(value.shape[0])
    return 1


# ---------------------------------------------------------------------------
# --datareader_path: the user's reader file
# ---------------------------------------------------------------------------


def user_code_error(exc: BaseException, path: Path | None, action: str) -> UserError:
    """One line for an exception raised by the user's code: the file and line inside
    ``path`` where it happened (when the traceback passes through it), the action,
    the exception."""
    if isinstance(exc, UserError):
        return exc
    line: int | None = None
    where = str(path) if path is not None else "user code"
    if path is not None:
        target = os.path.realpath(path)
        if isinstance(exc, SyntaxError) and exc.filename:
            if os.path.realpath(exc.filename) == target:
                line = exc.lineno
        else:
            for frame in reversed(traceback.extract_tb(exc.__traceback__)):
                if os.path.realpath(frame.filename) == target:
                    line = frame.lineno
                    break
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, SyntaxError):
        text = exc.msg
    message = f"{where}{f':{line}' if line else ''}: {action} failed: {type(exc).__name__}"
    message += f": {text}" if text else ""
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing and missing.split(".")[0] == "drpai_quantizer":
        message += (
            " (this reader was written for the DRP-AI Quantizer: import CalibrationDataReader "
            "from onnxruntime.quantization instead)"
        )
    return UserError(message)


def import_datareader(path: Path) -> ModuleType:
    """Import the user's ``.py`` file (this runs its code) under a private module name;
    its folder is on ``sys.path`` while it imports, so sibling helper modules work."""
    if not path.exists():
        raise UserError(f"datareader file {path} does not exist; check --datareader_path")
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"datareader {path} is not a .py file; check --datareader_path")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"drpaiq_user_datareader_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"datareader {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise user_code_error(exc, path, "importing the datareader") from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def find_reader_class(module: ModuleType, path: Path, inputs: Sequence[InputSpec]) -> type:
    """The reader class of a datareader module: a concrete class with ``get_next``,
    preferring ``NCHWDataReader``/``NHWCDataReader`` (by the model's layout when both
    are there), then classes named ``*DataReader``, classes defined in the file before
    imported ones, and subclasses before their bases."""
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and callable(getattr(obj, "get_next", None))
        and not inspect.isabstract(obj)
    ]
    own = [cls for cls in candidates if cls.__module__ == module.__name__]
    pool = own or candidates
    if not pool:
        raise UserError(
            f"datareader {path} defines no reader class (a class with a get_next() method, "
            "e.g. class NCHWDataReader(CalibrationDataReader)); check --datareader_path"
        )
    # Real inheritance (the MRO), not issubclass(): ONNX Runtime's CalibrationDataReader
    # has a __subclasshook__ under which any two classes with get_next() are
    # "subclasses" of each other, which would drop them all.
    pool = [c for c in pool if not any(o is not c and c in o.__mro__ for o in pool)]
    named = [c for c in pool if c.__name__ in REFERENCE_CLASS_NAMES]
    if len(named) > 1:
        wanted = "NHWCDataReader" if _looks_nhwc(inputs) else "NCHWDataReader"
        named = [c for c in named if c.__name__ == wanted]
    if named:
        pool = named
    else:
        pool = [c for c in pool if c.__name__.endswith("DataReader")] or pool
    if len(pool) > 1:
        names = ", ".join(sorted(c.__name__ for c in pool))
        raise UserError(
            f"datareader {path} has several reader classes ({names}); keep one, or name the "
            "one to use NCHWDataReader or NHWCDataReader"
        )
    return pool[0]


def _looks_nhwc(inputs: Sequence[InputSpec]) -> bool:
    shape = inputs[0].shape if inputs else ()
    return len(shape) == 4 and shape[3] == 3 and shape[1] != 3


def reader_from_file(
    path: Path, config: QuantizeConfig, context: ReaderContext, model_path: Path
) -> Reader:
    """Import ``path``, find its reader class and construct it as the reference tool
    does: ``Cls(calibrate_dataset, norm_mean, norm_std, model_path)``."""
    module = import_datareader(path)
    cls = find_reader_class(module, path, context.inputs)
    if config.norm_mean is None or config.norm_std is None:
        raise UserError(
            "--datareader_path readers are constructed with --norm_mean and --norm_std; "
            "give both (e.g. --norm_mean 0.485 0.456 0.406 --norm_std 0.229 0.224 0.225)"
        )
    dataset = str(context.dataset)
    mean, std = list(config.norm_mean), list(config.norm_std)
    call = f"constructing {cls.__name__}(calibrate_dataset, norm_mean, norm_std, model_path)"

    def construct() -> Any:
        try:
            obj = cls(dataset, list(mean), list(std), str(model_path))
        except UserError:
            raise
        except Exception as exc:
            raise user_code_error(exc, path, call) from None
        _apply_size_limit(obj, config.size_limit)
        return obj

    log.info(f"using reader class {cls.__name__} from {path}")
    obj = construct()
    if not callable(getattr(obj, "get_next", None)):  # pragma: no cover - guarded above
        raise UserError(f"datareader {path}: {cls.__name__} has no get_next()")
    return GetNextReader(obj, factory=construct, user_file=path, size_limit=config.size_limit)
