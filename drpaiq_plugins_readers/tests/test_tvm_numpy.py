"""The tvm and numpy readers, on real .npy/.npz/.bin files."""

from __future__ import annotations

import numpy as np
import pytest
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import InputSpec
from drpaiq_plugins_readers.numpy_reader import NumpyReader, npz_shapes
from drpaiq_plugins_readers.tvm import RANDOM_FRAMES, TVMReader

F32 = np.dtype(np.float32)


def stacked(reader, name="input"):
    return np.concatenate([b.feeds[name] for b in reader.batches()])


# -- tvm -----------------------------------------------------------------------


def test_tvm_reads_recorded_npy_and_bin_in_order(tmp_path, make_context):
    rng = np.random.default_rng(0)
    one = rng.normal(size=(3, 4, 4)).astype(np.float32)
    many = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    raw = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", one)
    np.save(tmp_path / "b.npy", many.astype(np.float64))  # cast back to float32
    raw.tofile(tmp_path / "c.bin")
    reader = TVMReader(make_context(tmp_path, shape=(None, 3, 4, 4), batch_size=2))
    assert len(reader) == 5
    data = stacked(reader)
    np.testing.assert_array_equal(data, np.concatenate([one[None], many, raw]))
    assert data.dtype == np.float32


def test_tvm_bin_of_the_wrong_size(tmp_path, make_context):
    np.zeros(7, np.float32).tofile(tmp_path / "x.bin")
    with pytest.raises(UserError, match=r"x.bin has 28 bytes.*192 bytes each"):
        TVMReader(make_context(tmp_path, shape=(1, 3, 4, 4)))


def test_tvm_npy_of_the_wrong_rank(tmp_path, make_context):
    np.save(tmp_path / "x.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(UserError, match=r"x\.npy has shape"):
        TVMReader(make_context(tmp_path, shape=(1, 3, 4, 4)))


def test_tvm_random_frames_are_seeded_and_announced(tmp_path, make_context, warnings_seen):
    context = make_context(tmp_path / "missing", shape=(1, 3, 4, 4))
    first, second = TVMReader(context), TVMReader(context)
    assert len(first) == RANDOM_FRAMES
    np.testing.assert_array_equal(stacked(first), stacked(second))
    assert stacked(first).shape == (RANDOM_FRAMES, 3, 4, 4)
    assert "random frames" in warnings_seen[0] and "mean nothing" in warnings_seen[0]
    limited = TVMReader(make_context(tmp_path, shape=(1, 3, 4, 4), size_limit=3))
    assert stacked(limited).shape[0] == 3


def test_tvm_random_frames_need_known_dimensions(tmp_path, make_context):
    with pytest.raises(UserError, match="--input-shape"):
        TVMReader(make_context(tmp_path, shape=(1, 3, None, None)))


def test_tvm_falls_back_to_images(tmp_path, make_context, write_image, warnings_seen):
    write_image(tmp_path / "a.png", (255, 0, 0))
    nhwc = stacked(TVMReader(make_context(tmp_path, shape=(None, 8, 8, 3))))
    assert nhwc.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(nhwc[0, 0, 0], [1.0, 0.0, 0.0])
    nchw = stacked(TVMReader(make_context(tmp_path, shape=(None, 3, 8, 8))))
    assert nchw.shape == (1, 3, 8, 8)
    assert not warnings_seen


def test_tvm_refuses_labels_and_multi_input(tmp_path, make_context):
    with pytest.raises(UserError, match="no class labels"):
        TVMReader(make_context(tmp_path, labeled=True))
    specs = [InputSpec(n, (1, 3), F32) for n in ("a", "b")]
    with pytest.raises(UserError, match="2 inputs"):
        TVMReader(make_context(tmp_path, inputs=specs))


# -- numpy ---------------------------------------------------------------------


def two_inputs():
    return [InputSpec("image", (None, 3, 2, 2), F32), InputSpec("meta", (None, 4), F32)]


def test_numpy_npz_keyed_by_input_name(tmp_path, make_context, warnings_seen):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    meta = rng.normal(size=(3, 4)).astype(np.float32)
    np.savez(tmp_path / "b.npz", image=image[1:], meta=meta[1:], extra=np.zeros(1))
    np.savez(tmp_path / "a.npz", image=image[0], meta=meta[0])  # one sample, no batch axis
    reader = NumpyReader(make_context(tmp_path, inputs=two_inputs(), batch_size=2))
    assert len(reader) == 3
    batches = list(reader.batches())
    assert [b.feeds["image"].shape[0] for b in batches] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([b.feeds["image"] for b in batches]), image)
    np.testing.assert_array_equal(np.concatenate([b.feeds["meta"] for b in batches]), meta)
    assert len(warnings_seen) == 1 and "extra" in warnings_seen[0]
    assert npz_shapes(tmp_path / "b.npz")["image"] == (2, 3, 2, 2)


def test_numpy_single_npy_file_and_size_limit(tmp_path, make_context):
    data = np.arange(40, dtype=np.float64).reshape(10, 4)
    np.save(tmp_path / "x.npy", data)
    spec = [InputSpec("v", (None, 4), F32)]
    reader = NumpyReader(make_context(tmp_path / "x.npy", inputs=spec, batch_size=4, size_limit=6))
    out = stacked(reader, "v")
    assert len(reader) == 6 and out.dtype == np.float32
    np.testing.assert_array_equal(out, data[:6])


def test_numpy_missing_input_name(tmp_path, make_context):
    np.savez(tmp_path / "a.npz", image=np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(UserError, match=r"no array for model input 'meta' \(its arrays: image\)"):
        NumpyReader(make_context(tmp_path, inputs=two_inputs()))


def test_numpy_npy_for_a_multi_input_model(tmp_path, make_context):
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(UserError, match="2 inputs"):
        NumpyReader(make_context(tmp_path, inputs=two_inputs()))


def test_numpy_wrong_rank_and_counts(tmp_path, make_context):
    np.savez(tmp_path / "a.npz", image=np.zeros((2, 2), np.float32), meta=np.zeros((1, 4)))
    with pytest.raises(UserError, match="array 'image' has shape"):
        NumpyReader(make_context(tmp_path, inputs=two_inputs()))
    np.savez(tmp_path / "a.npz", image=np.zeros((2, 3, 2, 2)), meta=np.zeros((3, 4)))
    with pytest.raises(UserError, match="different numbers of samples"):
        NumpyReader(make_context(tmp_path, inputs=two_inputs()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "none", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no .npz or .npy"),
        (lambda p: (p / "a.txt").write_text("x") and p / "a.txt", "not a .npz or .npy"),
        (lambda p: (p / "b.npz").write_text("x") and p / "b.npz", "not a readable .npz"),
    ],
)
def test_numpy_bad_data(tmp_path, make_context, make, message):
    with pytest.raises(UserError, match=message):
        NumpyReader(make_context(make(tmp_path), inputs=two_inputs()))
