"""`vidqa.cli.params`: every option of every command has help text."""

import typer
from cli_helpers import PATHS, is_group

from vidqa.cli import app


def test_every_option_has_help(monkeypatch):
    for path in PATHS:
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]
        if is_group(cmd):
            continue
        for p in cmd.params:
            assert p.help, f"vidqa {' '.join(path)}: {p.name} has no help text"
