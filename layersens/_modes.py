"""The names of the strategies, importable without JAX (the command line's ``--mode`` choices and help read
them before anything heavy is imported). ``planning.STRATEGIES`` is built from the strategy classes and checked
against this list."""

MODE_NAMES = ("auto", "forward", "reverse", "per-leaf", "structured")
# Short names accepted for the dense strategies (``--mode fwd``).
MODE_ALIASES = {"fwd": "forward", "rev": "reverse"}
