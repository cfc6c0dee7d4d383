"""Root conftest: import the installed plugin packages before pytest's importlib mode
maps the same-named distribution folders (drpaiq_plugins_*/) to namespace packages
that would hide them. A distribution that is not installed is simply skipped (the
nox sessions test the core alone and each plugin with the core)."""

import contextlib
import importlib

for _name in ("drpaiq_plugins_calibrators", "drpaiq_plugins_ops", "drpaiq_plugins_readers"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)
