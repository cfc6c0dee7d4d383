"""``drpaiq evaluate``: top-1/top-5 on a labeled folder, several models side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.evaluate import (
    PROBABILITY_FLOOR,
    Evaluation,
    ModelScore,
    evaluate,
    log_probabilities,
    mcnemar_p,
)
from drpaiq_core.load import model_inputs
from drpaiq_core.plugin_api import ReaderContext
from drpaiq_core.plugins import get_plugin_host
from onnx import TensorProto, helper, numpy_helper

from tests._models import (
    classifier,
    color_classifier,
    color_dataset,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
NO_NORM = ("--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1")


def run(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    color_dataset(tmp_path / "ds", per_class=4)
    color_classifier(tmp_path / "right.onnx")
    color_classifier(tmp_path / "wrong.onnx", order=(1, 2, 0))  # always one class off
    return tmp_path


def test_side_by_side_with_deltas(work):
    result = run("-q", "evaluate", "right.onnx", "wrong.onnx", "--dataset", "ds", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["classes"] == ["0_red", "1_green", "2_blue"]
    right, wrong = report["models"]
    assert (right["top1"], right["top5"]) == (100.0, 100.0)
    assert (wrong["top1"], wrong["top5"]) == (0.0, 100.0)  # 3 classes: top-5 holds them all
    assert wrong["delta_top1"] == -100.0 and wrong["delta_top5"] == 0.0
    assert wrong["top1_flips"] == 12  # every image gets another class than right.onnx's
    assert (wrong["top1_right_only"], wrong["top1_right_only_first"]) == (0, 12)
    assert wrong["top1_p"] == round(2 / 2**12, 4)  # 12 of 12 one way: p = 2 * 0.5**12
    assert "delta_top1" not in right and "top1_flips" not in right and "top1_p" not in right


def _outputs_on_folder(work: Path, *names: str) -> list[np.ndarray]:
    """Each model's first output on every image of ``work / "ds"``, read as evaluate
    reads them (the nchw_image reader, no normalization options), all in one batch."""
    inputs = model_inputs(onnx.load(str(work / names[0])))
    reader = get_plugin_host().readers.get("nchw_image")
    context = ReaderContext(dataset=work / "ds", model_path=None, inputs=inputs, labeled=True)
    images = np.concatenate([b.feeds[inputs[0].name] for b in reader(context).batches()])
    return [
        ort.InferenceSession(str(work / name)).run(None, {inputs[0].name: images})[0]
        for name in names
    ]


def test_kl_is_the_mean_divergence_of_the_class_probabilities(work):
    """The KL column: 0 for the same model, and for another the mean over the images of
    KL(first || other) of the softmax of their outputs, computed here by hand."""
    result = run("-q", "evaluate", "right.onnx", "right.onnx", "wrong.onnx", "-d", "ds", "--json")
    assert result.exit_code == 0, result.stderr
    first, same, wrong = json.loads(result.stdout)["models"]
    assert "kl_from_first" not in first and same["kl_from_first"] == 0.0
    ours, theirs = _outputs_on_folder(work, "right.onnx", "wrong.onnx")
    log_p, log_q = log_probabilities(ours), log_probabilities(theirs)
    expected = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))
    assert wrong["kl_from_first"] == pytest.approx(expected, rel=1e-3)


def test_probabilities_and_logits_give_the_same_log_probabilities():
    """A model ending in Softmax outputs probabilities; their log is taken as it is,
    while logits go through log-softmax first: the same answers either way."""
    logits = np.random.default_rng(3).normal(size=(5, 4)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        log_probabilities(probabilities), log_probabilities(logits), atol=1e-9
    )
    np.testing.assert_allclose(np.exp(log_probabilities(logits)).sum(axis=1), 1.0)


def test_flips_count_the_images_where_two_models_disagree(work):
    # The same model twice agrees everywhere, whatever the accuracy.
    result = run("-q", "evaluate", "wrong.onnx", "wrong.onnx", "right.onnx", "-d", "ds", "--json")
    assert result.exit_code == 0, result.stderr
    first, same, right = json.loads(result.stdout)["models"]
    assert "top1_flips" not in first
    assert same["top1_flips"] == 0 and right["top1_flips"] == 12
    assert same["top1_p"] == 1.0  # no image right for only one of them: no evidence
    assert (right["top1_right_only"], right["top1_right_only_first"]) == (12, 0)


def test_table_text(work):
    result = run("-q", "evaluate", "right.onnx", "wrong.onnx", "-d", "ds")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("12 images, 3 classes in ds (reader nchw_image)")
    assert lines[1].split()[:3] == ["model", "top-1", "top-5"]
    assert lines[1].split()[-3:] == ["flips", "p", "KL"]
    assert lines[2].split() == ["right.onnx", "100.00%", "100.00%"]
    wrong = lines[3].split()
    assert wrong[:-1] == ["wrong.onnx", "0.00%", "100.00%", "-100.00", "+0.00", "12", "0.00"]
    assert float(wrong[-1]) > 0.01  # every image's top class is another one


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [(0, 0, 1.0), (5, 5, 1.0), (0, 10, 2 / 1024), (11, 12, 1.0), (9, 5, 0.4240), (1, 9, 0.0215)],
)
def test_mcnemar_p_is_the_exact_binomial_tail(only_a, only_b, expected):
    assert mcnemar_p(only_a, only_b) == pytest.approx(expected, abs=1e-4)
    assert mcnemar_p(only_b, only_a) == mcnemar_p(only_a, only_b)


@pytest.mark.parametrize(("only_a", "only_b"), [(600, 500), (480, 560), (2900, 3100), (1, 3000)])
def test_mcnemar_p_for_many_images_matches_integer_arithmetic(only_a, only_b):
    """Beyond 1,023 discordant images 2.0**n overflows; the p-value must still come out,
    equal to the exact sum of binomial coefficients done in Python integers."""
    n = only_a + only_b
    exact = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n)
    assert mcnemar_p(only_a, only_b) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_nhwc_flag_and_normalization(work):
    color_classifier(work / "nhwc.onnx", layout="NHWC")
    result = run("-q", "evaluate", "nhwc.onnx", "--dataset", "ds", "--nhwc", "--norm_mean",
                 "[0.5,", "0.5,", "0.5]", "--norm_std", "0.5", "0.5", "0.5", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["top1"] == 100.0
    result = run("-q", "evaluate", "nhwc.onnx", "--dataset", "ds", "--nchw")
    assert result.exit_code == 2 and "nhwc_image" in result.stderr


def test_the_group_reader_option(work):
    color_classifier(work / "nhwc.onnx", layout="NHWC")
    result = run("-q", "--reader", "nhwc_image", "evaluate", "nhwc.onnx", "--dataset", "ds")
    assert result.exit_code == 0, result.stderr
    assert "(reader nhwc_image)" in result.stdout


def test_models_with_different_inputs_in_one_run(work):
    color_dataset(work / "big", per_class=2, size=16)
    color_classifier(work / "small.onnx", size=8)
    color_classifier(work / "large.onnx", size=16)
    result = evaluate(
        [work / "small.onnx", work / "large.onnx", work / "wrong.onnx"],
        dataset=work / "big",
        host=get_plugin_host(),
        batch_size=4,
        size_limit=5,
        quiet=True,
    )
    assert [s.total for s in result.scores] == [5, 5, 5]
    assert [s.top1 for s in result.scores] == [5, 5, 0]


def test_progress_on_stderr_unless_quiet(work):
    norm = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]
    loud = run("evaluate", "right.onnx", "--dataset", "ds", *norm)
    assert loud.exit_code == 0 and "evaluating" in loud.stderr and "img" in loud.stderr
    quiet = run("--quiet", "evaluate", "right.onnx", "--dataset", "ds", *norm)
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_fixed_batch_model(work):
    classifier(work / "fixed.onnx", batch=1, classes=3)
    result = run("-q", "evaluate", "fixed.onnx", "right.onnx", "--dataset", "ds", "--json")
    assert result.exit_code == 0, result.stderr
    assert [m["images"] for m in json.loads(result.stdout)["models"]] == [12, 12]


def fixed_batch_copy(source: Path, target: Path, batch: int) -> Path:
    """``source`` with its input's batch dimension fixed at ``batch``."""
    model = onnx.load(str(source))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = batch
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("fixed", [(5,), (16,), (5, 7)], ids=["5", "more-than-images", "5-and-7"])
def test_fixed_batch_models_score_every_image(work, fixed):
    """12 images do not fill batches of 5 (nor one of 16): the last batch is filled up
    and its extra results dropped, so every model scores all 12 images and the paired
    columns compare the same images."""
    names = [f"b{b}.onnx" for b in fixed]
    for name, batch in zip(names, fixed):
        fixed_batch_copy(work / "right.onnx", work / name, batch)
    args = ("-q", "evaluate", "right.onnx", *names, "wrong.onnx", "-d", "ds", "--batch-size", "4")
    result = run(*args, *NO_NORM, "--json")
    assert result.exit_code == 0, result.stderr
    assert "left out" not in result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 12 and "note" not in report
    models = report["models"]
    assert [m["images"] for m in models] == [12] * (len(fixed) + 2)
    for row in models[1:-1]:
        assert (row["top1"], row["top1_flips"], row["top1_p"]) == (100.0, 0, 1.0)
    assert models[-1]["top1_flips"] == 12
    lines = run(*args, *NO_NORM).stdout.splitlines()
    assert lines[0].startswith("12 images,") and "images" not in lines[1]
    assert lines[3].split()[-3:] == ["0", "1.00", "0.00e+00"]
    for row in models[1:-1]:
        assert row["kl_from_first"] == 0.0  # the same model in other batch sizes


def score(name: str, predictions: list[int], labels: list[int]) -> ModelScore:
    """A :class:`ModelScore` of a model that answered ``predictions`` on ``labels``."""
    hits = np.asarray(predictions) == np.asarray(labels)
    return ModelScore(
        Path(name),
        top1=int(hits.sum()),
        top5=len(labels),
        total=len(labels),
        predictions=[np.asarray(predictions, np.int32)],
        hits=[hits],
    )


def test_models_that_saw_different_images_show_their_counts_and_why_columns_are_blank():
    """A third-party reader may give one input shape fewer images than another: the
    table then shows each model's image count, and one line under it says why flips
    and p are blank; the JSON says the same."""
    labels = [0, 1, 2, 0, 1, 2]
    result = Evaluation(dataset=Path("ds"), reader="custom", classes=["a", "b", "c"])
    result.scores = [
        score("full.onnx", [0, 1, 2, 0, 1, 2], labels),
        score("same.onnx", [0, 1, 2, 0, 1, 0], labels),
        score("fewer.onnx", [0, 1, 2, 0], labels[:4]),
    ]
    lines = result.to_text().splitlines()
    assert lines[0].startswith("4 to 6 images, 3 classes in ds")
    assert lines[1].split()[:4] == ["model", "images", "top-1", "top-5"]
    assert lines[2].split()[:2] == ["full.onnx", "6"]
    same = ["same.onnx", "6", "83.33%", "100.00%", "-16.67", "+0.00", "1", "1.00"]
    assert lines[3].split() == same
    assert lines[4].split() == ["fewer.onnx", "4", "100.00%", "100.00%", "+0.00", "+0.00"]
    assert len(lines) == 6 and "fewer.onnx" in lines[5] and "flips and p" in lines[5]
    report = result.to_dict()
    assert report["images"] is None and report["note"] == lines[5]
    assert [m["images"] for m in report["models"]] == [6, 6, 4]
    assert "top1_flips" not in report["models"][2] and "top1_p" not in report["models"][2]


def test_an_empty_class_folder_is_warned_about_once(work):
    (work / "ds" / "3_gray").mkdir()
    classifier(work / "small.onnx", classes=4, size=8)
    classifier(work / "large.onnx", classes=4, size=16)
    # Two input sizes read the folder twice; the warning comes once.
    result = run("-q", "evaluate", "small.onnx", "large.onnx", "-d", "ds", *NO_NORM, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["classes"][-1] == "3_gray"
    # Another input size runs on other batches: no KL against the first model.
    assert "kl_from_first" not in report["models"][1]
    assert [m["images"] for m in json.loads(result.stdout)["models"]] == [12, 12]
    warnings = [line for line in result.stderr.splitlines() if "3_gray" in line]
    assert len(warnings) == 1 and "warning" in warnings[0] and "no images" in warnings[0]
    assert "in ds" in warnings[0]


def test_a_dataset_whose_class_folders_are_all_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "dog").mkdir()
    color_classifier(tmp_path / "right.onnx")
    result = run("-q", "evaluate", "right.onnx", "-d", "ds", *NO_NORM)
    assert result.exit_code == 2
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert "ds has 2 class sub-folder(s) but no files" in error and "test images" in error
    assert "calibration" not in error


def features_first_classifier(path: Path, features: int = 8) -> Path:
    """A color classifier whose first output is a ``[N, features]`` feature vector and
    whose second output is the 3 class scores."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["flat"]),
            helper.make_node("Gemm", ["flat", "f", "fb"], ["features"], transB=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["scores"], transB=1),
        ],
        "features_first",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]),
        ],
        initializer=[
            numpy_helper.from_array(rng.normal(0, 1, (features, 3)).astype(np.float32), "f"),
            numpy_helper.from_array(np.arange(features, dtype=np.float32), "fb"),
            numpy_helper.from_array(np.eye(3, dtype=np.float32), "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_first_output_with_more_scores_than_classes_is_warned_about(work):
    features_first_classifier(work / "features.onnx")
    result = run("-q", "evaluate", "right.onnx", "features.onnx", "-d", "ds", *NO_NORM)
    assert result.exit_code == 0, result.stderr
    warning = result.stderr.strip()
    assert len(warning.splitlines()) == 1 and "warning" in warning
    assert "features.onnx" in warning and "'features' [N,8]" in warning
    assert "3 classes" in warning and "'scores'" in warning
    # A model with exactly one score per class is not warned about.
    assert run("-q", "evaluate", "right.onnx", "-d", "ds", *NO_NORM).stderr == ""


@pytest.mark.skipif(
    not (SAMPLES / "modA_resnet_nchw.onnx").is_file() or not (SAMPLES / "data" / "test").is_dir(),
    reason="the shipped samples are not built",
)
def test_sample_accuracy(tmp_path):
    result = run("-q", "evaluate", str(SAMPLES / "modA_resnet_nchw.onnx"), "--dataset",
                 str(SAMPLES / "data" / "test"), "--nchw", "--norm_mean", "[0.2860,", "0.2860,",
                 "0.2860]", "--norm_std", "[0.3530,", "0.3530,", "0.3530]", "--size-limit",
                 "400", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["top1"] > 50.0


def _with_softmax(source: Path, target: Path, quantized: bool) -> Path:
    """``source`` with a Softmax on its scores; ``quantized``: followed by what an INT8
    model's requantization can do to it, rows summing to 1.01 instead of 1 and small
    probabilities rounded to 0 (a Mul by 1.01, then QuantizeLinear/DequantizeLinear at
    uint8, scale 1/200)."""
    model = onnx.load(str(source))
    scores = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Softmax", [scores], ["probs"], axis=1))
    last = "probs"
    if quantized:
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(1.01, np.float32), "drift"),
                numpy_helper.from_array(np.array(1 / 200, np.float32), "s"),
                numpy_helper.from_array(np.array(0, np.uint8), "z"),
            ]
        )
        model.graph.node.extend(
            [
                helper.make_node("Mul", ["probs", "drift"], ["drifted"]),
                helper.make_node("QuantizeLinear", ["drifted", "s", "z"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            ]
        )
        last = "dq"
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 3]))
    onnx.save(model, str(target))
    return target


def test_probability_outputs_are_compared_as_probabilities(work):
    """A model ending in Softmax against its INT8-style copy: the copy's outputs are
    read as probabilities because the first model's are (renormalized, zeros floored),
    although on their own they do not sum to 1: a small KL, the one computed by hand."""
    color_classifier(work / "sharp.onnx")
    # Sharper scores, so that some probabilities round to 0 in the copy.
    sharp = onnx.load(str(work / "sharp.onnx"))
    sharp.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(sharp.graph.initializer[0]) * 12, "w")
    )
    onnx.save(sharp, str(work / "sharp.onnx"))
    _with_softmax(work / "sharp.onnx", work / "fp32.onnx", quantized=False)
    _with_softmax(work / "sharp.onnx", work / "int8.onnx", quantized=True)
    result = run("-q", "evaluate", "fp32.onnx", "int8.onnx", "-d", "ds", "--json")
    assert result.exit_code == 0, result.stderr
    kl = json.loads(result.stdout)["models"][1]["kl_from_first"]
    p, q = _outputs_on_folder(work, "fp32.onnx", "int8.onnx")
    assert np.any(q == 0.0) and np.all(q.sum(axis=1) > 1.005)  # not read as probabilities alone
    q = np.maximum(q / q.sum(axis=1, keepdims=True), PROBABILITY_FLOOR)
    expected = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    assert kl == pytest.approx(expected, rel=1e-3) and 0.0 < kl < 0.05
