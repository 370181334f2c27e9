"""``python -m qml`` runs the ``qml`` command."""

from .cli.main import main

if __name__ == "__main__":
    main()
