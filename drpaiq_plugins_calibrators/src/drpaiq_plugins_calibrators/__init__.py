"""drpaiq's built-in calibrators, registered through the ``drpaiq`` entry-point group.

``minmax``, ``entropy`` and ``percentile``: each a mergeable statistic whose state does
not grow with the number of calibration batches (see ``docs/calibrators.md``).
"""
