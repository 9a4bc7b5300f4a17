"""The command line: ``vidqa ask|chat|index|cache|bench|train|synthetic``; one module per command.

Each command parses its options (``params``), calls the library, and renders through a writer
(``writers``: text, rich live, JSON). ``_load`` is the model loader every command calls through this
package, so that a test can hand the commands a model it has already loaded.
"""

from vidqa.cli.common import load as _load
from vidqa.cli.app import app, main

__all__ = ["app", "main"]
