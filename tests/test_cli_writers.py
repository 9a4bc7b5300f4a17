"""`vidqa.cli.writers`: text, rich live and JSON writers; progress stages."""

import io
import json

import media
import pytest
import typer
from cli_helpers import one_line_error, run

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


# ------------------------------------------------------------------------------------------------
# user strings are printed as they are: file names, questions and messages with rich markup in them

MARKUP_NAMES = ["My video [dQw4w9WgXcQ].mp4", "a[/]b.mp4", "[bold red]loud[/].mp4"]


def _named(folder, name, frames=10):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return media.make_video(path, num_frames=frames, fps=10)  # other frames: other content, other entries


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_markup_in_a_missing_files_name_is_printed_as_is(capsys, tmp_path, voco_dir, name):
    code, _, err = run(capsys, "ask", str(tmp_path / name), "what?", "--model", str(voco_dir))
    one_line_error(code, err, name)


def test_markup_in_names_through_ask_index_and_cache_ls(capsys, tmp_path, voco_dir, monkeypatch):
    from rich.console import Console

    import vidqa.cli.index as index_cmd

    videos = [_named(tmp_path / "v", name, 10 + 5 * i) for i, name in enumerate(MARKUP_NAMES)]
    code, out, err = run(capsys, "ask", videos[0], "what is [bold]this[/]?", "--model", voco_dir,
                         "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["video"] == str(videos[0]) and json.loads(out)["question"] == "what is [bold]this[/]?"
    screen = io.StringIO()  # index on a terminal: the progress bar names each file
    monkeypatch.setattr(index_cmd, "live_progress", lambda: True)
    monkeypatch.setattr(index_cmd, "err", Console(file=screen, force_terminal=True, width=300))
    code, _, err = run(capsys, "index", videos[0], "--model", voco_dir, "--cache-dir", tmp_path / "other")
    assert code == 0, err + screen.getvalue()
    assert "frames of My video [dQw4w9WgXcQ].mp4" in screen.getvalue()  # the bar's last frame names it
    code, _, err = run(capsys, "index", tmp_path / "v", "--model", voco_dir, "--json")
    assert code == 0, err
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = run(capsys, "cache", "ls")
    assert code == 0, err
    for name in MARKUP_NAMES:
        assert name in out, out
    code, out, err = run(capsys, "cache", "ls", "--json")
    assert sorted(e["source"] for e in json.loads(out)) == sorted(str(v) for v in videos)


def test_summary_and_result_text_are_not_markup(capsys):
    w = TextWriter(io.StringIO())
    w.summary("store: /tmp/My video [dQw4w9WgXcQ]/x[/]")
    w.result({}, "answer: [bold]x[/] [/]")
    assert w.stream.getvalue().strip() == "answer: [bold]x[/] [/]"
    assert capsys.readouterr().err.strip() == "store: /tmp/My video [dQw4w9WgXcQ]/x[/]"
