"""The last step of a run: write files atomically.

Every output is written to a temporary file in the destination folder and renamed
over the target, so an interrupted run leaves either the previous file or none. The
temporary file is created only once the bytes to write are ready, and removed on any
error or Ctrl-C; only a process killed outright (SIGKILL, power loss) inside that
short window can leave a hidden ``.<name>.<random>.tmp`` beside the target, which is
safe to delete. A written file gets the mode a plain ``open()`` would give it (the
previous file's mode when it replaces one), not the private mode of temporary files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from drpaiq_core.errors import UserError

if TYPE_CHECKING:
    import onnx

#: Models larger than this are written with their weights in an external data file.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000

#: The files renamed into place since the last :func:`reset_written`, in order: what
#: an interrupted or failed command has already written.
_written: list[Path] = []


def reset_written() -> None:
    """Start a new command: forget the files written so far."""
    _written.clear()


def written_files() -> list[Path]:
    """The files written (complete, renamed into place) since :func:`reset_written`
    that still exist (files of temporary folders are gone once a run unwinds)."""
    return [path for path in dict.fromkeys(_written) if path.exists()]


def check_output_path(output: Path, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output that would overwrite an input or whose folder is missing."""
    if output.exists() and output.is_dir():
        raise UserError(
            f"output {output} is a folder; give a file path such as {output}/model_q.onnx"
        )
    for source in inputs:
        if source.exists() and output.exists() and os.path.samefile(source, output):
            raise UserError(
                f"output {output} is the input model; choose another output path "
                "(drpaiq never overwrites its input)"
            )
        if source.resolve() == output.resolve():
            raise UserError(f"output {output} is the input model; choose another output path")
    if not output.parent.resolve().is_dir():
        raise UserError(f"output folder {output.parent} does not exist; create it first")
    _check_writable(output)


def _check_writable(output: Path) -> None:
    """Fail now, not after a long calibration, when no file can be created beside
    ``output`` (a read-only folder or file system, no permission)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise UserError(
            f"cannot write to folder {output.parent} ({exc.strerror or exc}); choose an "
            "output path in a folder you can write to"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    try:
        # Linux reports the umask without changing it (os.umask would, for a moment,
        # for every thread of the process).
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``,
    on any failure (or interrupt) remove it.

    :raises UserError: the file cannot be written (no space left, no permission, ...).
    """
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else _new_file_mode()
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=str(target.parent)
        )
    except OSError as exc:
        raise _write_error(target, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0o600); the output is an ordinary file.
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        _written.append(target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from None
        raise


def _write_error(target: Path, exc: OSError) -> UserError:
    return UserError(
        f"cannot write {target}: {exc.strerror or exc}; free some disk space or choose "
        "another output folder (nothing was changed)"
    )


def write_text(target: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: Path, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def publish_folder(staging: Path, target: Path) -> None:
    """Copy every file under ``staging`` into the folder ``target`` (made if missing),
    each atomically: files written during a run are staged and published only once
    the run has succeeded, so that a failed or interrupted run leaves none of them."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {target}: {exc.strerror or exc}") from None
    for source in sorted(p for p in staging.rglob("*") if p.is_file()):
        destination = target / source.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        copy_file(source, destination)


def proto_bytes(model: onnx.ModelProto) -> int:
    """The model's serialized size; at least ``2**31`` when it is over protobuf's 2 GB
    limit (protobuf then cannot even count it and raises instead)."""
    try:
        return int(model.ByteSize())
    except Exception:
        return 2**31


def write_model(
    model: onnx.ModelProto,
    target: Path,
    *,
    external: tuple[str, int] | None = None,
) -> None:
    """Serialize ``model`` to ``target`` atomically; large models get their weights in
    ``<target name>.data`` beside it (also written atomically, before the model).

    The weights are moved out one tensor at a time and put back from the written file
    afterwards, so a model of several GB is not held twice in memory; ``model`` is the
    same afterwards.

    :param external: ``(file name, size threshold)``: write the weights of that many
        bytes or more to that file beside ``target`` (a file name, not a path), whatever
        the model's size.
    """
    if external is None and proto_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        write_bytes(target, model.SerializeToString(deterministic=True))
        return
    from onnx import TensorProto

    data_name, threshold = external or (f"{target.name}.data", 1024)
    moved: list[tuple[onnx.TensorProto, int, int, bool]] = []
    with atomic_path(target.parent / data_name) as tmp_data:
        with open(tmp_data, "wb") as data:
            for tensor in _internal_tensors(model):
                raw = tensor.raw_data  # read once: for a big tensor, a big copy
                if len(raw) < threshold:
                    continue
                # 4 KiB alignment lets ONNX Runtime map the weights in place.
                offset = -(-data.tell() // 4096) * 4096
                data.seek(offset)
                data.write(raw)
                moved.append((tensor, offset, len(raw), tensor.HasField("data_location")))
                del raw
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (
                    ("location", data_name),
                    ("offset", str(offset)),
                    ("length", str(moved[-1][2])),
                ):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        try:
            shell = model.SerializeToString(deterministic=True)
        finally:
            # Put the weights back, read from the data file just written.
            with open(tmp_data, "rb") as data:
                for tensor, offset, length, had_location in moved:
                    data.seek(offset)
                    tensor.raw_data = data.read(length)
                    if had_location:
                        tensor.data_location = TensorProto.DEFAULT
                    else:
                        tensor.ClearField("data_location")
                    del tensor.external_data[:]
    # The data file is in place before the model that points at it.
    write_bytes(target, shell)


def _internal_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model (initializers and node attributes, subgraphs too)
    that holds its data in ``raw_data``."""
    from onnx.external_data_helper import _get_all_tensors

    for tensor in _get_all_tensors(model):
        if tensor.HasField("raw_data"):
            yield tensor
