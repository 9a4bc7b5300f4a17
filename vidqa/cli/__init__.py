"""The command line: ``vidqa ask|chat|index|cache|bench|train|synthetic``; one module per command.

Each command parses its options (``params``), calls the library, and renders through a writer
(``writers``: text, rich live, JSON).
"""

from vidqa.cli.app import app, main

__all__ = ["app", "main"]
