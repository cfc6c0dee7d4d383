"""drpaiq's built-in readers, registered through the ``drpaiq`` entry-point group."""
