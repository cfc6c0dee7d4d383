"""Registers drpaiq's built-in readers through the ``drpaiq`` entry-point group.

The reader modules import only numpy and drpaiq's plugin API at module level; Pillow,
onnx and ONNX Runtime are imported when data is read.
"""

from __future__ import annotations

from collections.abc import Callable

from drpaiq_core.plugin_api import Reader

from drpaiq_core import hookimpl


@hookimpl
def drpaiq_register_readers(register: Callable[[type[Reader]], None]) -> None:
    """Register ``nchw_image``, ``nhwc_image``, ``tvm`` and ``numpy``."""
    from drpaiq_plugins_readers.images import NCHWImageReader, NHWCImageReader
    from drpaiq_plugins_readers.numpy_reader import NumpyReader
    from drpaiq_plugins_readers.tvm import TVMReader

    for cls in (NCHWImageReader, NHWCImageReader, TVMReader, NumpyReader):
        register(cls)
