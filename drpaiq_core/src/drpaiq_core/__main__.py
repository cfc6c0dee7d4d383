"""``python -m drpaiq_core`` runs the ``drpaiq`` command."""

from drpaiq_core.cli import main

if __name__ == "__main__":
    main(prog_name="drpaiq")
