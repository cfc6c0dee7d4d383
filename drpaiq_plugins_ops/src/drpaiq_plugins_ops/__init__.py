"""drpaiq's built-in ops, registered through the ``drpaiq`` entry-point group."""
