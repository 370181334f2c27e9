"""The ``qml`` command line."""
