"""Hook implementations of drpaiq-example-plugin.

drpaiq imports this module, named by the entry point ``example`` in the group
``drpaiq``, the first time it needs any plugin. Importing it must stay cheap: it
imports only drpaiq's core, and the classes and the command are imported inside the
hooks, so ``drpaiq --help`` never pays for onnx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from drpaiq_core import PLUGIN_API_VERSION, hookimpl

if TYPE_CHECKING:
    import click
    from drpaiq_core.plugin_api import ExclusionMatcher

#: The major version of drpaiq's plugin API this plugin is written against.
REQUIRED_API_MAJOR = 1


def check_api_version(version: str) -> None:
    """Refuse to load against a plugin API of another major version.

    The ``drpaiq-core>=0.1,<0.2`` pin already prevents that for a normal install; the
    check catches installs that skipped dependency resolution (``pip install
    --no-deps``). drpaiq reports the :class:`ImportError` as one warning line naming
    this plugin, and keeps working without it.
    """
    major = int(version.split(".", 1)[0])
    if major != REQUIRED_API_MAJOR:
        raise ImportError(
            f"drpaiq-example-plugin needs drpaiq plugin API {REQUIRED_API_MAJOR}.x, "
            f"but the installed drpaiq-core provides {version}; "
            "install a matching core with: pip install 'drpaiq-core>=0.1,<0.2'"
        )


check_api_version(PLUGIN_API_VERSION)


@hookimpl
def drpaiq_register_exclusion_matchers(
    register: Callable[[type[ExclusionMatcher]], None],
) -> None:
    """Register the ``yolov5_postprocess`` matcher (advanced option ``exclude_preset``)."""
    from drpaiq_example_plugin.yolov5 import YoloV5PostprocessMatcher

    register(YoloV5PostprocessMatcher)


@hookimpl
def drpaiq_register_commands(cli: click.Group) -> None:
    """Add ``drpaiq list-ops``."""
    from drpaiq_example_plugin.list_ops import list_ops_command

    cli.add_command(list_ops_command)
