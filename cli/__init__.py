"""The ``layersens`` command line (installed as the package ``layersens_cli``)."""
