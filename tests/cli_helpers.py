"""Helpers the CLI tests share: run a command in-process, read its help, check a one-line error."""

import typer

from vidqa.cli import app, main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def wide_help(capsys, monkeypatch, *path) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: the defaults are not wrapped apart
    code, out, _ = run(capsys, *path, "--help")
    assert code == 0
    return " ".join(out.split())


def is_group(cmd) -> bool:
    return hasattr(cmd, "commands")  # typer may use its bundled copy of click: no isinstance


def command_paths(group, prefix=()) -> list[tuple[str, ...]]:
    paths = []
    for name, cmd in group.commands.items():
        paths.append((*prefix, name))
        if is_group(cmd):
            paths += command_paths(cmd, (*prefix, name))
    return paths


PATHS = command_paths(typer.main.get_command(app))
