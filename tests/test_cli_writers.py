"""`vidqa.cli.writers`: text, rich live and JSON writers; progress stages."""

import io
import json

import typer

from vidqa.cli import app, main
from vidqa.cli.writers import JsonWriter, LiveWriter, TextWriter, get_writer


def test_writers(capsys):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(get_writer(True), JsonWriter)
    assert type(get_writer(False, io.StringIO())) is TextWriter
    assert type(get_writer(False, Tty())) is LiveWriter
    pipe = io.StringIO()
    assert TextWriter(pipe).answer(iter([" a", "b "])) == "ab" and pipe.getvalue() == " ab \n"
    js = io.StringIO()
    w = JsonWriter(js)
    assert w.answer(iter(["x", "y"])) == "xy" and js.getvalue() == ""  # JSON: only the result is printed
    w.result({"a": 1})
    w.result({"a": 2}, "ignored text")
    assert [json.loads(line) for line in js.getvalue().splitlines()] == [{"a": 1}, {"a": 2}]
    with w.progress() as p:  # silent in JSON mode
        p.stage("x", total=3)
        p.advance(2)
    assert capsys.readouterr().err == ""


def test_progress_stages_draw_one_task_each():
    from rich.console import Console
    from rich.progress import Progress

    from vidqa.cli.writers import _Bar

    with Progress(console=Console(file=io.StringIO())) as p:
        bar = _Bar(p)
        bar.advance()  # before any stage: nothing to move
        bar.stage("decoding frames")
        bar.stage("compressing frames", total=8)
        bar.advance(4)
        (task,) = p.tasks
        assert (task.description, task.total, task.completed) == ("compressing frames", 8, 4)
        bar.stage("answering")
        (task,) = p.tasks
        assert task.total is None
