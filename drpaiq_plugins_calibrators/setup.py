"""Build the optional compiled histogram loop (everything else is in pyproject.toml).

``optional=True``: on a machine without a C compiler the install still succeeds and the
histogram calibrators use their NumPy path, which gives the same counts, more slowly.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "drpaiq_plugins_calibrators._binning",
            ["src/drpaiq_plugins_calibrators/_binning.c"],
            extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
            optional=True,
        )
    ]
)
