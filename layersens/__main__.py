"""``python -m layersens``: the command line."""

from layersens_cli.main import main

main()
