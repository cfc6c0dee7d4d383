"""Hook implementations of drpaiq-plugins-ops: op quantizers and exclusion matchers."""

from __future__ import annotations

from collections.abc import Callable

from drpaiq_core.plugin_api import ExclusionMatcher, OpQuantizer

from drpaiq_core import hookimpl


@hookimpl
def drpaiq_register_op_quantizers(register: Callable[[type[OpQuantizer]], None]) -> None:
    """Register the built-in op quantizers."""
    from drpaiq_plugins_ops.quantizers import OP_QUANTIZERS

    for cls in OP_QUANTIZERS:
        register(cls)


@hookimpl
def drpaiq_register_exclusion_matchers(
    register: Callable[[type[ExclusionMatcher]], None],
) -> None:
    """Register the built-in exclusion matchers (op type, node name, CSV pattern)."""
    from drpaiq_plugins_ops.exclusions import EXCLUSION_MATCHERS

    for cls in EXCLUSION_MATCHERS:
        register(cls)
