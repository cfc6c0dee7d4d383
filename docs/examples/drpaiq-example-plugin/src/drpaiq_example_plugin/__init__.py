"""drpaiq-example-plugin: a YOLOv5 decode-tail exclusion preset and a ``list-ops`` command.

drpaiq finds this distribution through its entry point in the group ``drpaiq``, which
names :mod:`drpaiq_example_plugin.plugin`; nothing here needs to be imported by hand.
"""

__version__ = "0.1.0"
