"""drpaiq's built-in calibrators, registered through the ``drpaiq`` entry-point group."""
