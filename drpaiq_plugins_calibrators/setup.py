"""Build the optional compiled loops (everything else is in pyproject.toml).

``optional=True``: on a machine without a C compiler the install still succeeds and the
calibrators use their NumPy paths: the histogram loop gives the same counts and the
Entropy search the same divergences, bit for bit, more slowly.
"""

import sys

from setuptools import Extension, setup

ARGS = [] if sys.platform == "win32" else ["-O3"]

setup(
    ext_modules=[
        Extension(
            f"drpaiq_plugins_calibrators.{name}",
            [f"src/drpaiq_plugins_calibrators/{name}.c"],
            depends=["src/drpaiq_plugins_calibrators/_buffers.h"],
            extra_compile_args=ARGS,
            optional=True,
        )
        for name in ("_binning", "_divergence")
    ]
)
