"""Choosing and checking readers (drpaiq_core.datasource), with real readers and files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.datasource import (
    GetNextReader,
    SpreadReader,
    ValidatingReader,
    adapt_reader_object,
    check_feeds,
    find_reader_class,
    import_datareader,
    open_reader,
)
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, InputSpec, Reader, ReaderContext
from drpaiq_core.plugins import get_plugin_host

from tests._engine import ArrayReader
from tests._models import (
    classifier,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

SPEC = [InputSpec("input", (None, 3, 8, 8), np.dtype(np.float32))]


class Frames:
    """A get_next reader over fixed frames; counts its calls."""

    def __init__(self, count: int, rewindable: bool = False) -> None:
        self.frames = [np.full((1, 3, 8, 8), i, np.float32) for i in range(count)]
        self.position = 0
        self.calls = 0
        if rewindable:
            self.rewind = self._rewind

    def _rewind(self) -> None:
        self.position = 0

    def get_next(self):
        self.calls += 1
        if self.position >= len(self.frames):
            return None
        self.position += 1
        return {"input": self.frames[self.position - 1]}


def values(reader: Reader) -> list[float]:
    return [
        float(b.feeds["input"][i, 0, 0, 0])
        for b in reader.batches()
        for i in range(len(b.feeds["input"]))
    ]


@pytest.fixture
def model(tmp_path):
    path = classifier(tmp_path / "m.onnx")
    return path, onnx.load(str(path))


# -- get_next objects ------------------------------------------------------------------


def test_rewindable_object_is_rewound_for_a_second_pass():
    frames = Frames(3, rewindable=True)
    reader = adapt_reader_object(frames)
    assert values(reader) == [0, 1, 2]
    assert values(reader) == [0, 1, 2]
    assert len(reader) == 3


def test_other_objects_are_replayed_from_disk():
    frames = Frames(3)
    reader = adapt_reader_object(frames)
    assert len(reader) == 0  # unknown until one pass is done
    assert values(reader) == [0, 1, 2]
    calls = frames.calls
    assert values(reader) == [0, 1, 2]
    assert frames.calls == calls  # the second pass did not call get_next
    assert len(reader) == 3


def test_size_limit_cuts_the_stream():
    reader = adapt_reader_object(Frames(5), size_limit=2)
    assert values(reader) == [0, 1]


def test_a_reader_is_used_as_is_and_junk_is_refused():
    class Mine(Reader):
        PLUGIN_NAME = "mine"

        def __len__(self):
            return 0

        def batches(self):
            yield from ()

    mine = Mine(ReaderContext(dataset=None, model_path=None, inputs=()))
    assert adapt_reader_object(mine) is mine
    with pytest.raises(UserError, match="has no get_next"):
        adapt_reader_object(object())


def test_get_next_returning_junk():
    class Junk:
        def get_next(self):
            return [1, 2, 3]

    with pytest.raises(UserError, match="returned list"):
        list(GetNextReader(Junk()).batches())


# -- checking batches ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, "no data for model input 'input'"),
        ({"input": np.zeros((1, 3, 8, 8), np.float32), "x": np.zeros(1)}, "'x', which is not"),
        ({"input": [[0.0]]}, "must be a numpy array"),
        ({"input": np.zeros((1, 3, 8, 8), np.float16)}, "got float16"),
        ({"input": np.zeros((1, 3, 8, 9), np.float32)}, "dimension 3 is 9, the model wants 8"),
        ([1, 2], "feeds must be a dict"),
    ],
)
def test_check_feeds(feeds, message):
    with pytest.raises(UserError, match=message):
        check_feeds(feeds, SPEC, "reader x")


def test_check_feeds_accepts_any_batch_size():
    check_feeds({"input": np.zeros((7, 3, 8, 8), np.float32)}, SPEC, "reader x")


def test_a_reader_that_yields_nothing():
    class Empty(Reader):
        PLUGIN_NAME = "empty"

        def __len__(self):
            return 0

        def batches(self):
            yield from ()

    checked = ValidatingReader(Empty(ReaderContext(dataset=None, model_path=None, inputs=())), SPEC)
    with pytest.raises(UserError, match="reader empty yielded no data"):
        list(checked.batches())


def test_a_reader_that_yields_no_batch_objects():
    class Dicts(Reader):
        PLUGIN_NAME = "dicts"

        def __len__(self):
            return 1

        def batches(self):
            yield {"input": np.zeros((1, 3, 8, 8), np.float32)}

    checked = ValidatingReader(Dicts(ReaderContext(dataset=None, model_path=None, inputs=())), SPEC)
    with pytest.raises(UserError, match="not a drpaiq Batch"):
        list(checked.batches())


# -- open_reader ---------------------------------------------------------------------


def test_open_reader_uses_the_named_plugin(tmp_path, model):
    path, proto = model
    images(tmp_path / "cal", 3)
    config = QuantizeConfig(
        path,
        tmp_path / "q.onnx",
        reader="nchw_image",
        calibrate_dataset=tmp_path / "cal",
        norm_mean=(0, 0, 0),
        norm_std=(1, 1, 1),
        batch_size=2,
    )
    reader = open_reader(config, get_plugin_host(), proto, path)
    assert isinstance(reader, ValidatingReader) and reader.describe == "reader nchw_image"
    assert [b.feeds["input"].shape[0] for b in reader.batches()] == [2, 1]


def test_open_reader_with_tvm(tmp_path, model):
    path, proto = model
    config = QuantizeConfig(path, tmp_path / "q.onnx", tvm=True, calibrate_dataset=tmp_path)
    reader = open_reader(config, get_plugin_host(), proto, path)
    assert reader.describe == "reader tvm"
    config.reader = "nhwc_image"
    with pytest.raises(UserError, match="drop --reader nhwc_image"):
        open_reader(config, get_plugin_host(), proto, path)


def test_open_reader_with_an_object(tmp_path, model):
    path, proto = model
    config = QuantizeConfig(path, tmp_path / "q.onnx", reader_object=Frames(2))
    reader = open_reader(config, get_plugin_host(), proto, path)
    assert values(reader) == [0, 1]


READER_FILE = """
import numpy as np
from helper_module import VALUE  # a module beside the reader file


class Base:
    made = 0

    def __init__(self, folder, mean, std, model):
        type(self).made += 1
        self.args = (folder, mean, std, model)
        self.left = 2
        self.size_limit = 0

    def get_next(self):
        self.left -= 1
        if self.left < 0:
            return None
        return {"input": np.full((1, 3, 8, 8), VALUE, np.float32)}


class NCHWDataReader(Base):
    pass


class NHWCDataReader(Base):
    pass
"""


def test_datareader_file_is_constructed_as_the_reference_does(tmp_path, model):
    path, proto = model
    (tmp_path / "helper_module.py").write_text("VALUE = 7.0\n")
    (tmp_path / "readers.py").write_text(READER_FILE)
    before = list(sys.path)
    config = QuantizeConfig(
        path,
        tmp_path / "q.onnx",
        calibrate_dataset=tmp_path / "cal",
        norm_mean=(0.1, 0.2, 0.3),
        norm_std=(1, 1, 1),
        datareader_path=tmp_path / "readers.py",
        size_limit=5,
    )
    reader = open_reader(config, get_plugin_host(), proto, path)
    assert sys.path == before
    obj = reader.inner.obj
    assert type(obj).__name__ == "NCHWDataReader"  # the model is NCHW
    assert obj.args == (str(tmp_path / "cal"), [0.1, 0.2, 0.3], [1.0, 1.0, 1.0], str(path))
    assert obj.size_limit == 5
    assert values(reader) == [7.0, 7.0]
    assert values(reader) == [7.0, 7.0]  # a second pass constructs a fresh reader
    assert type(obj).made == 2


def test_datareader_class_choice(tmp_path):
    (tmp_path / "helper_module.py").write_text("VALUE = 1.0\n")
    (tmp_path / "r.py").write_text(READER_FILE)
    module = import_datareader(tmp_path / "r.py")
    nhwc = [InputSpec("x", (None, 8, 8, 3), np.dtype(np.float32))]
    assert find_reader_class(module, tmp_path / "r.py", nhwc).__name__ == "NHWCDataReader"
    assert find_reader_class(module, tmp_path / "r.py", SPEC).__name__ == "NCHWDataReader"
    (tmp_path / "two.py").write_text(
        "class A:\n    def get_next(self): ...\nclass B:\n    def get_next(self): ...\n"
    )
    with pytest.raises(UserError, match=r"several reader classes \(A, B\)"):
        find_reader_class(import_datareader(tmp_path / "two.py"), Path("two.py"), SPEC)
    (tmp_path / "sub.py").write_text(
        "class Base:\n    def get_next(self): ...\nclass Mine(Base):\n    pass\n"
    )
    assert (
        find_reader_class(import_datareader(tmp_path / "sub.py"), Path("s"), SPEC).__name__
        == "Mine"
    )
    # ONNX Runtime's CalibrationDataReader makes every class with get_next() pass
    # issubclass() for every other: the choice must follow real inheritance.
    (tmp_path / "ort.py").write_text(
        "from onnxruntime.quantization import CalibrationDataReader\n"
        "class NCHWDataReader(CalibrationDataReader):\n    def get_next(self): ...\n"
        "class NHWCDataReader(CalibrationDataReader):\n    def get_next(self): ...\n"
        "class ImageDataReader(CalibrationDataReader):\n    def get_next(self): ...\n"
    )
    module = import_datareader(tmp_path / "ort.py")
    assert find_reader_class(module, Path("o"), nhwc).__name__ == "NHWCDataReader"
    assert find_reader_class(module, Path("o"), SPEC).__name__ == "NCHWDataReader"
    (tmp_path / "imported.py").write_text("from drpaiq_core.compat import NCHWDataReader\n")
    found = find_reader_class(import_datareader(tmp_path / "imported.py"), Path("i"), SPEC)
    assert found.__name__ == "NCHWDataReader"


def test_datareader_needs_normalization(tmp_path, model):
    path, proto = model
    (tmp_path / "helper_module.py").write_text("VALUE = 1.0\n")
    (tmp_path / "r.py").write_text(READER_FILE)
    config = QuantizeConfig(path, tmp_path / "q.onnx", datareader_path=tmp_path / "r.py")
    with pytest.raises(UserError, match="--norm_mean and --norm_std"):
        open_reader(config, get_plugin_host(), proto, path)
    config.tvm = True
    with pytest.raises(UserError, match="do not give --datareader_path"):
        open_reader(config, get_plugin_host(), proto, path)


def test_reference_reader_object_end_to_end(tmp_path, model):
    """drpaiq's own NCHWDataReader through the adapter: rewound, checked, same data as
    the nchw_image plugin."""
    from drpaiq_core.compat import NCHWDataReader

    path, proto = model
    images(tmp_path / "cal", 4)
    obj = NCHWDataReader(tmp_path / "cal", [0.5] * 3, [0.2] * 3, path)
    config = QuantizeConfig(path, tmp_path / "q.onnx", reader_object=obj)
    via_object = open_reader(config, get_plugin_host(), proto, path)
    plugin = open_reader(
        QuantizeConfig(
            path,
            tmp_path / "q.onnx",
            calibrate_dataset=tmp_path / "cal",
            norm_mean=(0.5,) * 3,
            norm_std=(0.2,) * 3,
        ),
        get_plugin_host(),
        proto,
        path,
    )
    first = np.concatenate([b.feeds["input"] for b in via_object.batches()])
    again = np.concatenate([b.feeds["input"] for b in via_object.batches()])
    expected = np.concatenate([b.feeds["input"] for b in plugin.batches()])
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    assert len(via_object) == 4
    assert isinstance(next(via_object.batches()), Batch)


def test_a_spread_reader_picks_batches_over_the_whole_data(tmp_path: Path) -> None:
    """A folder sorted by class must not give the diagnosis its first class only."""
    feeds = [{"x": np.full((1, 2), float(i), np.float32)} for i in range(10)]

    def picked(reader: SpreadReader) -> list[float]:
        return [float(b.feeds["x"][0, 0]) for b in reader.batches()]

    four = SpreadReader(ArrayReader(feeds), 4)
    assert picked(four) == [0.0, 3.0, 5.0, 8.0] and len(four) == 4
    assert picked(four) == [0.0, 3.0, 5.0, 8.0]  # the same on the next pass
    assert picked(SpreadReader(ArrayReader(feeds), 20)) == [float(i) for i in range(10)]
    pairs = [{"x": np.full((2, 2), float(i), np.float32)} for i in range(5)]
    assert picked(SpreadReader(ArrayReader(pairs), 4)) == [0.0, 3.0]
