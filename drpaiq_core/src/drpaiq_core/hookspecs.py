"""Hook specifications: the contract between drpaiq's core and its plugins.

Every extension point of drpaiq is one hook here. Plugins implement them with
:data:`drpaiq_core.hookimpl` in a module that an entry point of the group ``drpaiq``
names (see ``docs/writing-plugins.md``). The built-in readers, calibrators, op
quantizers and exclusion matchers come in the same way.

Evolution rule: a hook only ever gains arguments, never loses or renames one
(pluggy lets an implementation accept a subset of the arguments), and every change is
recorded against :data:`drpaiq_core.PLUGIN_API_VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from drpaiq_core.plugin_api import Calibrator, ExclusionMatcher, OpQuantizer, Reader

#: Marker for hook specifications; only this module uses it.
hookspec = pluggy.HookspecMarker("drpaiq")
#: Marker plugins put on their hook implementations.
hookimpl = pluggy.HookimplMarker("drpaiq")


# ---------------------------------------------------------------------------
# Registration hooks: each hands the plugin a ``register`` callable
# ---------------------------------------------------------------------------


@hookspec
def drpaiq_register_readers(register: Callable[[type[Reader]], None]) -> None:
    """Register data reader classes.

    A reader turns a data source (an image folder, recorded tensors, ``.npy``
    files) into input feeds for calibration and evaluation. Users select one by
    its :attr:`~drpaiq_core.plugin_api.Reader.PLUGIN_NAME` with ``drpaiq --reader
    NAME``.

    :param register: call it once per reader class, a subclass of
        :class:`drpaiq_core.plugin_api.Reader` that declares ``PLUGIN_NAME``.
    :returns: nothing; the return value is ignored.

    Called once, the first time any reader is looked up. Two classes with the same
    name, from any plugins, are an error that names both distributions.
    """


@hookspec
def drpaiq_register_calibrators(register: Callable[[type[Calibrator]], None]) -> None:
    """Register calibrator classes.

    A calibrator is a mergeable statistic over one tensor's values: it folds each
    batch into a state whose size does not depend on the number of batches, merges
    two states, and computes the tensor's range. Users select one with
    ``--calibrate_method NAME`` (names match case-insensitively, so the reference
    tool's ``MinMax`` selects ``minmax``).

    :param register: call it once per subclass of
        :class:`drpaiq_core.plugin_api.Calibrator` that declares ``PLUGIN_NAME``.
    :returns: nothing; the return value is ignored.

    Called once, the first time any calibrator is looked up.
    """


@hookspec
def drpaiq_register_op_quantizers(register: Callable[[type[OpQuantizer]], None]) -> None:
    """Register op quantizer classes.

    An op quantizer declares, for the ONNX op types in its ``OP_TYPES``, which
    inputs of a node are activations, weights (with their channel axis) and biases,
    which outputs are quantized, and which tensors must share quantization
    parameters. It returns plain data; it never edits the graph.

    :param register: call it once per subclass of
        :class:`drpaiq_core.plugin_api.OpQuantizer`. ``PLUGIN_NAME`` names the class
        in listings; ``OP_TYPES`` (``"domain:OpType"`` or plain ``"OpType"`` for the
        default domain) says what it handles.
    :returns: nothing; the return value is ignored.

    Called once, the first time the engine plans a model. Two classes claiming one
    op type are an error that names both distributions.
    """


@hookspec
def drpaiq_register_exclusion_matchers(
    register: Callable[[type[ExclusionMatcher]], None],
) -> None:
    """Register exclusion matcher classes.

    An exclusion matcher reads one kind of user rule (op types, node names,
    activation-function patterns, or a model-specific preset) and returns the nodes
    to leave in float, with a report of what each rule matched.

    :param register: call it once per subclass of
        :class:`drpaiq_core.plugin_api.ExclusionMatcher` that declares
        ``PLUGIN_NAME``.
    :returns: nothing; the return value is ignored.

    Called once, the first time the engine selects nodes to quantize. Every
    registered matcher runs on every quantization; a matcher whose rules are not
    given by the user returns no match.
    """


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@hookspec
def drpaiq_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``drpaiq`` command.

    :param cli: the root :class:`click.Group`; add commands with
        ``@cli.command()`` or ``cli.add_command(...)``. Import heavy libraries inside
        the command function, not at module level, so that ``drpaiq --help`` stays
        fast.
    :returns: nothing; the return value is ignored.

    Called once per construction of the command group, after the built-in commands
    are in place. A command name that is already taken is reported and skipped.
    """
