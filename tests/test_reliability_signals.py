"""Real ``drpaiq quantize`` processes, killed and interrupted (issue 7, points 2 and 5).

- SIGKILL at several moments of a run (starting up, calibrating, searching ranges,
  near the end) leaves the previous output byte for byte, or the complete new one, and
  nothing else but, at worst, a hidden temporary file beside the output (write.py's
  documented window, never hit in practice).
- Ctrl-C (SIGINT) while calibrating exits with 130 and one line, and leaves nothing:
  not beside the output, not in the temp folder; SIGTERM likewise, with 143.
- Two processes with different hash seeds write the same bytes.

The runs quantize the shipped sample model with its 200 calibration images when they
are built, else a generated model and 200 generated images.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests._models import classifier, images
from tests.test_reliability_corpus import PREVIOUS, child_env, leftovers

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

#: Progress-bar labels that mark where a run is (printed unless --quiet).
CALIBRATING = b"calibrate pass"
SEARCHING = b"searching ranges"

#: Hidden temporary files that write.py documents as the only possible leftover of a
#: process killed outright while renaming its output into place.
DOCUMENTED_TEMPORARY = re.compile(r"^\.(out\.onnx|s\.json|r\.json)\..+\.tmp$")


@dataclass(frozen=True)
class Sample:
    """A model, its calibration images and their normalization."""

    model: Path
    data: Path
    norm: tuple[str, ...]

    def argv(self, *extra: str) -> list[str]:
        return [
            "quantize", str(self.model), "-o", "out.onnx", "--calibrate_dataset",
            str(self.data), *self.norm, "--summary-json", "s.json", "--save-ranges", "r.json",
            *extra,
        ]  # fmt: skip


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Sample:
    model = SAMPLES / "modA_resnet_nchw.onnx"
    data = SAMPLES / "data" / "calibrate"
    if model.is_file() and data.is_dir() and len(list(data.glob("*.png"))) >= 200:
        norm = ("--norm_mean", "0.2860", "0.2860", "0.2860")
        return Sample(model, data, (*norm, "--norm_std", "0.3530", "0.3530", "0.3530"))
    folder = tmp_path_factory.mktemp("sample")
    classifier(folder / "model.onnx", size=32, classes=10)
    images(folder / "calibrate", 200, size=32)
    norm = ("--norm_mean", "0.5", "0.5", "0.5", "--norm_std", "0.25", "0.25", "0.25")
    return Sample(folder / "model.onnx", folder / "calibrate", norm)


@dataclass
class Run:
    """A ``python -m drpaiq_core`` process whose stderr is read as it comes, so that a
    test can act when a progress label appears."""

    folder: Path
    argv: list[str]
    env: dict[str, str]
    stderr: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "drpaiq_core", *self.argv],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        while chunk := self.process.stderr.read1(65536):
            self.stderr += chunk

    def wait_for(self, marker: bytes, timeout: float = 120) -> float:
        """Seconds from the start until ``marker`` appeared on stderr (it must)."""
        deadline = time.monotonic() + timeout
        while marker not in self.stderr:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"the run ended before {marker!r}: {bytes(self.stderr)!r}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"no {marker!r} within {timeout} s")
            time.sleep(0.002)
        return time.monotonic() - self.started

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """Exit code, stdout and stderr once the process has ended."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the run did not end within {timeout} s") from None
        self._reader.join(10)
        assert self.process.stdout is not None
        stdout = self.process.stdout.read().decode("utf-8", "replace")
        self.process.stdout.close()
        self.process.stderr.close()  # type: ignore[union-attr]
        return code, stdout, self.stderr.decode("utf-8", "replace")


def _workspace(root: Path, name: str, *, previous: bool = True) -> tuple[Path, Path]:
    """An output folder (with an earlier ``out.onnx`` when ``previous``) and a private
    temp folder."""
    folder, private_tmp = root / name, root / f"{name}.tmp"
    folder.mkdir()
    private_tmp.mkdir()
    if previous:
        (folder / "out.onnx").write_bytes(PREVIOUS)
    return folder, private_tmp


def _paths_removed(document: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in document.items() if k not in ("input_model", "output_model")}


@dataclass(frozen=True)
class Reference:
    """A complete run: what it wrote and when its progress labels appeared."""

    model: bytes
    summary: dict[str, object]
    ranges: bytes
    searching_at: float
    ended_at: float


@pytest.fixture(scope="module")
def reference(sample, tmp_path_factory) -> list[Reference]:
    """Two complete runs side by side, with different PYTHONHASHSEEDs."""
    root = tmp_path_factory.mktemp("reference")
    runs = []
    for seed in ("1", "2"):
        folder, private_tmp = _workspace(root, f"seed{seed}", previous=False)
        runs.append(Run(folder, sample.argv(), child_env(private_tmp, PYTHONHASHSEED=seed)))
    references = []
    for run in runs:
        searching_at = run.wait_for(SEARCHING)
        code, stdout, stderr = run.finish()
        assert code == 0, stderr
        assert "wrote out.onnx" in stdout
        references.append(
            Reference(
                model=(run.folder / "out.onnx").read_bytes(),
                summary=json.loads((run.folder / "s.json").read_text()),
                ranges=(run.folder / "r.json").read_bytes(),
                searching_at=searching_at,
                ended_at=time.monotonic() - run.started,
            )
        )
    return references


def test_two_processes_with_different_hash_seeds_write_the_same_bytes(reference):
    first, second = reference
    assert first.model == second.model
    assert first.ranges == second.ranges
    assert _paths_removed(first.summary) == _paths_removed(second.summary)
    # The model is a real one: ONNX Runtime loads it.
    session = ort.InferenceSession(first.model, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})


def _kill_when(run: Run, moment: Callable[[Run], object]) -> None:
    try:
        moment(run)
    finally:
        run.process.send_signal(signal.SIGKILL)


def test_sigkill_leaves_the_previous_output_or_the_complete_new_one(sample, reference, tmp_path):
    late = reference[0].searching_at + 0.7 * (reference[0].ended_at - reference[0].searching_at)
    moments = {
        "starting": lambda run: time.sleep(0.4),
        "calibrating": lambda run: run.wait_for(CALIBRATING),
        "searching": lambda run: run.wait_for(SEARCHING),
        "late": lambda run: time.sleep(max(0.0, late - (time.monotonic() - run.started))),
    }
    runs, killers = {}, []
    for name, moment in moments.items():
        folder, private_tmp = _workspace(tmp_path, name)
        run = runs[name] = Run(folder, sample.argv(), child_env(private_tmp))
        # One thread per run, so that each is killed the moment its label appears
        # (the runs go side by side).
        killers.append(threading.Thread(target=_kill_when, args=(run, moment), daemon=True))
        killers[-1].start()
    for killer in killers:
        killer.join(180)
    outcomes = {}
    for name, run in runs.items():
        code, _, stderr = run.finish()
        written = (run.folder / "out.onnx").read_bytes()
        outcomes[name] = "completed" if code == 0 else "previous kept"
        if code == 0:
            # The run was faster than the kill: then the new output is complete.
            assert written == reference[0].model, name
            summary = json.loads((run.folder / "s.json").read_text())
            assert _paths_removed(summary) == _paths_removed(reference[0].summary)
            assert (run.folder / "r.json").read_bytes() == reference[0].ranges
        else:
            assert code == -signal.SIGKILL, (name, code, stderr)
            assert written in (PREVIOUS, reference[0].model), name
        others = [
            p.name
            for p in run.folder.iterdir()
            if p.name not in ("out.onnx", "s.json", "r.json")
            and not DOCUMENTED_TEMPORARY.match(p.name)
        ]
        assert not others, (name, others)
    # Killed while it was still working, the run left the previous output.
    for name in ("starting", "calibrating", "searching"):
        assert outcomes[name] == "previous kept", outcomes
        assert (runs[name].folder / "out.onnx").read_bytes() == PREVIOUS
        assert not (runs[name].folder / "s.json").exists()
        assert not (runs[name].folder / "r.json").exists()


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [
        (signal.SIGINT, 130, "drpaiq: interrupted; no output was written"),
        (signal.SIGTERM, 143, "drpaiq: terminated; no output was written"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_run_exits_with_one_line_leaving_nothing(
    sample, tmp_path, signum, code, message
):
    """Ctrl-C (and SIGTERM, as CI timeouts and ``docker stop`` send it) while
    calibrating: the exit code, one line, and nothing left here or in the temp folder
    (the run's working folder there is removed on the way out)."""
    folder, private_tmp = _workspace(tmp_path, "interrupted")
    run = Run(folder, sample.argv(), child_env(private_tmp))
    run.wait_for(CALIBRATING)
    run.process.send_signal(signum)
    exit_code, stdout, stderr = run.finish()
    assert exit_code == code, stderr
    assert "Traceback" not in stderr and not stdout.strip()
    # stderr also holds the progress bars (drawn with carriage returns).
    lines = [part.strip() for part in re.split(r"[\r\n]", stderr) if part.strip()]
    said = [
        line
        for line in lines
        if line.startswith("drpaiq:") and not line.startswith(("drpaiq: info:", "drpaiq: warning:"))
    ]
    assert said == [message], stderr
    assert all(("|" in line or line.startswith("drpaiq:")) for line in lines), lines
    assert sorted(p.name for p in folder.iterdir()) == ["out.onnx"]
    assert (folder / "out.onnx").read_bytes() == PREVIOUS
    assert not leftovers(private_tmp)
