"""The image-folder readers nchw_image and nhwc_image, on real image files."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import InputSpec
from drpaiq_core.plugins import get_plugin_host
from drpaiq_plugins_readers.images import NCHWImageReader, NHWCImageReader
from PIL import Image


def all_batches(reader):
    return list(reader.batches())


def stacked(reader, name="input"):
    return np.concatenate([b.feeds[name] for b in reader.batches()])


def test_nchw_values_are_normalized_and_channels_first(tmp_path, make_context, write_image):
    write_image(tmp_path / "a.png", (51, 102, 204))
    context = make_context(tmp_path, norm_mean=(0.1, 0.2, 0.3), norm_std=(0.5, 0.25, 2.0))
    data = stacked(NCHWImageReader(context))
    assert data.shape == (1, 3, 8, 8) and data.dtype == np.float32
    expected = (np.array([51, 102, 204]) / 255.0 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0]
    np.testing.assert_allclose(data[0, :, 3, 5], expected, rtol=1e-6)


def test_nhwc_layout(tmp_path, make_context, write_image):
    write_image(tmp_path / "a.png", (255, 0, 51))
    context = make_context(tmp_path, shape=(None, 8, 8, 3))
    data = stacked(NHWCImageReader(context))
    assert data.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(data[0, 2, 2], [1.0, 0.0, 0.2], rtol=1e-6)


def test_images_are_resized_to_the_model_size(tmp_path, make_context, write_image):
    write_image(tmp_path / "big.png", (0, 255, 0), size=(37, 21))
    data = stacked(NCHWImageReader(make_context(tmp_path, shape=(None, 3, 5, 7))))
    assert data.shape == (1, 3, 5, 7)
    np.testing.assert_allclose(data[0, 1], 1.0, atol=1e-6)  # a solid colour stays solid


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("L", 128, [128 / 255] * 3),
        ("1", 1, [1.0] * 3),
        ("LA", (64, 10), [64 / 255] * 3),
        ("RGBA", (10, 20, 30, 0), [10 / 255, 20 / 255, 30 / 255]),
        ("CMYK", (0, 0, 0, 0), [1.0, 1.0, 1.0]),
    ],
)
def test_other_modes_become_rgb(tmp_path, make_context, write_image, mode, color, expected):
    suffix = "jpg" if mode == "CMYK" else "png"
    write_image(
        tmp_path / f"x.{suffix}", color, mode=mode, **({"quality": 100} if mode == "CMYK" else {})
    )
    data = stacked(NHWCImageReader(make_context(tmp_path, shape=(None, 8, 8, 3))))
    np.testing.assert_allclose(data[0, 4, 4], expected, atol=2 / 255)


def test_palette_with_transparency(tmp_path, make_context):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    data = stacked(NHWCImageReader(make_context(tmp_path, shape=(None, 8, 8, 3))))
    np.testing.assert_allclose(data[0, 0, 0], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)


def test_sixteen_bit_gray_keeps_its_range(tmp_path, make_context):
    pixels = np.full((8, 8), 32768, dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    data = stacked(NHWCImageReader(make_context(tmp_path, shape=(None, 8, 8, 3))))
    np.testing.assert_allclose(data[0, 1, 1], [32768 / 65535] * 3, atol=1e-6)


@pytest.mark.parametrize("suffix", ["jpg", "jpeg", "bmp", "gif", "tif", "webp", "PNG"])
def test_formats_pillow_opens(tmp_path, make_context, write_image, suffix):
    write_image(tmp_path / f"img.{suffix}", (90, 90, 90))
    data = stacked(NCHWImageReader(make_context(tmp_path)))
    np.testing.assert_allclose(data, 90 / 255, atol=3 / 255)


def test_sorted_order_including_sub_folders(tmp_path, make_context, write_image):
    for name, value in [("b.png", 2), ("a.png", 1), ("sub/c.png", 3), (".hidden.png", 9)]:
        write_image(tmp_path / name, (value, value, value))
    (tmp_path / "notes.txt").write_text("not an image")
    reader = NCHWImageReader(make_context(tmp_path, batch_size=8))
    (batch,) = all_batches(reader)
    assert [Path(s).name for s in batch.sources] == ["a.png", "b.png", "c.png"]
    np.testing.assert_allclose(batch.feeds["input"][:, 0, 0, 0] * 255, [1, 2, 3], atol=1e-4)
    assert len(reader) == 3


def test_size_limit_and_batches(tmp_path, make_context, write_image):
    for i in range(5):
        write_image(tmp_path / f"{i}.png", (i, i, i))
    reader = NCHWImageReader(make_context(tmp_path, batch_size=2, size_limit=3))
    assert len(reader) == 3
    assert [b.feeds["input"].shape[0] for b in reader.batches()] == [2, 1]
    unlimited = NCHWImageReader(make_context(tmp_path, batch_size=2))
    assert [b.feeds["input"].shape[0] for b in unlimited.batches()] == [2, 2, 1]


def test_fixed_batch_dimension_wins(tmp_path, make_context, write_image, warnings_seen):
    for i in range(5):
        write_image(tmp_path / f"{i}.png")
    one = NCHWImageReader(make_context(tmp_path, shape=(1, 3, 8, 8), batch_size=4))
    assert [b.feeds["input"].shape[0] for b in one.batches()] == [1] * 5
    two = NCHWImageReader(make_context(tmp_path, shape=(2, 3, 8, 8)))
    assert [b.feeds["input"].shape[0] for b in two.batches()] == [2, 2]
    assert any("fixed at 2" in w and "last 1" in w for w in warnings_seen)


def test_labeled_folder(tmp_path, make_context, write_image):
    for cls, count in [("1_dog", 2), ("0_cat", 1), ("2_emu", 1)]:
        for i in range(count):
            write_image(tmp_path / cls / f"{i}.png")
    (tmp_path / "README.png").write_bytes(b"")  # a top-level file is not a class
    reader = NCHWImageReader(make_context(tmp_path, labeled=True, batch_size=3))
    assert reader.class_names == ["0_cat", "1_dog", "2_emu"]
    labels = np.concatenate([b.labels for b in reader.batches()])
    assert labels.tolist() == [0, 1, 2, 1]  # classes take turns
    limited = NCHWImageReader(make_context(tmp_path, labeled=True, size_limit=3))
    assert np.concatenate([b.labels for b in limited.batches()]).tolist() == [0, 1, 2]


def test_labeled_folder_without_classes(tmp_path, make_context, write_image):
    write_image(tmp_path / "a.png")
    with pytest.raises(UserError, match="no class sub-folders"):
        NCHWImageReader(make_context(tmp_path, labeled=True))


def test_corrupt_image_is_skipped_with_a_warning(
    tmp_path, make_context, write_image, warnings_seen
):
    write_image(tmp_path / "a.png", (1, 1, 1))
    (tmp_path / "b.png").write_bytes(b"garbage, not a png")
    write_image(tmp_path / "c.png", (3, 3, 3))
    reader = NCHWImageReader(make_context(tmp_path, batch_size=4))
    first = stacked(reader)
    second = stacked(reader)  # a second pass: same data, no second warning
    assert first.shape[0] == 2
    np.testing.assert_array_equal(first, second)
    assert len(warnings_seen) == 1 and "b.png" in warnings_seen[0]


def test_size_limit_counts_usable_images(tmp_path, make_context, write_image):
    (tmp_path / "a.png").write_bytes(b"broken")
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "c.png")
    reader = NCHWImageReader(make_context(tmp_path, size_limit=2, batch_size=4))
    assert stacked(reader).shape[0] == 2


def test_only_corrupt_images_is_an_error(tmp_path, make_context, warnings_seen):
    (tmp_path / "a.jpg").write_bytes(b"broken")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    reader = NCHWImageReader(make_context(tmp_path))
    with pytest.raises(UserError, match="no readable image") as err:
        stacked(reader)
    assert "a.jpg" in str(err.value)
    assert len(warnings_seen) == 2


def _png_header_only(path: Path, side: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_decompression_bomb_is_skipped(tmp_path, make_context, write_image, warnings_seen):
    _png_header_only(tmp_path / "bomb.png", 100_000)
    write_image(tmp_path / "ok.png")
    assert Image.MAX_IMAGE_PIXELS is not None  # the protection is on
    data = stacked(NCHWImageReader(make_context(tmp_path)))
    assert data.shape[0] == 1
    assert len(warnings_seen) == 1
    assert "bomb.png" in warnings_seen[0] and "decompression-bomb" in warnings_seen[0]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is empty"),
        (lambda p: (p.mkdir(), (p / "x.txt").write_text("x")), "no image files"),
        (lambda p: p.write_text("a file"), "is not a folder"),
    ],
)
def test_bad_folders(tmp_path, make_context, setup, message):
    folder = tmp_path / "data"
    setup(folder)
    with pytest.raises(UserError, match=message):
        NCHWImageReader(make_context(folder))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"norm_mean": (0.1, 0.2)}, "norm_mean must be 3 numbers"),
        ({"norm_std": (1.0, 1.0, 1.0, 1.0)}, "norm_std must be 3 numbers"),
        ({"norm_std": (1.0, 0.0, 1.0)}, "must not contain 0"),
        ({"norm_mean": (float("nan"), 0.0, 0.0)}, "finite"),
    ],
)
def test_bad_normalization(tmp_path, make_context, write_image, fields, message):
    write_image(tmp_path / "a.png")
    with pytest.raises(UserError, match=message):
        NCHWImageReader(make_context(tmp_path, **fields))


def test_missing_normalization_warns(tmp_path, make_context, write_image, warnings_seen):
    write_image(tmp_path / "a.png", (255, 255, 255))
    reader = NCHWImageReader(make_context(tmp_path, norm_mean=None, norm_std=None))
    np.testing.assert_allclose(stacked(reader), 1.0)
    assert any("--norm_mean" in w for w in warnings_seen)


def test_dynamic_size_needs_input_shape(tmp_path, make_context, write_image):
    write_image(tmp_path / "a.png", size=(20, 10))
    with pytest.raises(UserError, match="--input-shape"):
        NCHWImageReader(make_context(tmp_path, shape=(None, 3, None, None)))
    reader = NCHWImageReader(
        make_context(tmp_path, shape=(None, 3, None, None), input_shape=(1, 3, 6, 4))
    )
    assert stacked(reader).shape == (1, 3, 6, 4)
    with pytest.raises(UserError, match="disagrees"):
        NCHWImageReader(make_context(tmp_path, input_shape=(1, 3, 6, 4)))
    with pytest.raises(UserError, match="dimensions"):
        NCHWImageReader(make_context(tmp_path, input_shape=(3, 6, 4)))


def test_layout_mismatch_names_the_other_reader(tmp_path, make_context, write_image):
    write_image(tmp_path / "a.png")
    with pytest.raises(UserError, match="nhwc_image"):
        NCHWImageReader(make_context(tmp_path, shape=(None, 8, 8, 3)))
    with pytest.raises(UserError, match="nchw_image"):
        NHWCImageReader(make_context(tmp_path, shape=(None, 3, 8, 8)))
    with pytest.raises(UserError, match="4-D image input"):
        NCHWImageReader(make_context(tmp_path, shape=(None, 10)))


def test_multi_input_model_is_refused(tmp_path, make_context, write_image):
    write_image(tmp_path / "a.png")
    specs = [InputSpec(n, (None, 3, 8, 8), np.dtype(np.float32)) for n in ("a", "b")]
    with pytest.raises(UserError, match="reader numpy"):
        NCHWImageReader(make_context(tmp_path, inputs=specs))


def test_registered_through_the_entry_point():
    host = get_plugin_host()
    assert {"nchw_image", "nhwc_image", "tvm", "numpy"} <= set(host.readers.names())
    assert host.readers.get("NCHW_IMAGE") is NCHWImageReader
    assert host.readers.get("nhwc_image").reference_reader().__name__ == "NHWCDataReader"


def test_registering_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from drpaiq_core.plugins import get_plugin_host\n"
        "get_plugin_host().readers.names()\n"
        "heavy = [m for m in ('PIL', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
