"""drpaiq: an INT8 post-training quantizer for ONNX CNNs, built from plugins.

The core holds the hook specifications, plugin discovery, the quantization engine
and the ``drpaiq`` command; readers, calibrators, op quantizers and exclusion
matchers are plugins, the built-in ones included.
"""

from __future__ import annotations

from drpaiq_core.hookspecs import hookimpl

__version__ = "0.1.0"

#: The version of the plugin API (the hook specs and ``drpaiq_core.plugin_api``).
#: The major part changes only when a hook loses or changes an argument; plugins pin
#: ``drpaiq-core`` to a range and may check this at import.
PLUGIN_API_VERSION = "1.0"

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
