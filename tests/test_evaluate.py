"""``drpaiq evaluate``: top-1/top-5 on a labeled folder, several models side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.evaluate import evaluate, mcnemar_p
from drpaiq_core.plugins import get_plugin_host

from tests._models import (
    classifier,
    color_classifier,
    color_dataset,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


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
    assert lines[1].split()[-2:] == ["flips", "p"]
    assert lines[2].split() == ["right.onnx", "100.00%", "100.00%"]
    assert lines[3].split() == ["wrong.onnx", "0.00%", "100.00%", "-100.00", "+0.00", "12", "0.00"]


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
