"""Every command's help (-h and --help, defaults shown), `chat --json`, the writers, and `vidqa train`'s
progress lines."""

import io
import json
import sys

import pytest
import typer

import media
from vidqa.cli import app, main
from vidqa.cli import train as train_cmd
from vidqa.cli.common import without_option
from vidqa.cli.writers import JsonWriter, LiveWriter, TextWriter, get_writer


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


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


def test_every_command_is_listed():
    assert {p[0] for p in PATHS} == {"ask", "chat", "index", "cache", "bench", "train", "synthetic"}
    assert {p for p in PATHS if p[0] == "cache"} >= {("cache", "ls"), ("cache", "rm"), ("cache", "verify")}


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("path", [()] + PATHS, ids=lambda p: " ".join(p) or "vidqa")
def test_help_for_every_command(capsys, path, flag):
    code, out, err = run(capsys, *path, flag)
    assert code == 0, err
    assert "Usage" in out and "Traceback" not in out + err


def wide_help(capsys, monkeypatch, *path) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: the defaults are not wrapped apart
    code, out, _ = run(capsys, *path, "--help")
    assert code == 0
    return " ".join(out.split())


def test_every_option_has_help(monkeypatch):
    for path in PATHS:
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]
        if is_group(cmd):
            continue
        for p in cmd.params:
            assert p.help, f"vidqa {' '.join(path)}: {p.name} has no help text"


def test_train_help_shows_defaults(capsys, monkeypatch):
    out = wide_help(capsys, monkeypatch, "train")
    for default in ("[default: voco]", "[default: synthetic]", "[default: 2000]", "[default: 32]",
                    "[default: 0.001]", "[default: 4000]", "[default: 300]", "[default: 100]", "[default: auto]"):
        assert default in out, default
    assert "voco|mini|full|pool" in out and "[required]" in out
    for flag in ("--freeze-vision", "--grad-checkpointing", "--pack"):
        assert flag in out and "--no-" + flag[2:] not in out  # a flag, not a --x/--no-x pair


def test_synthetic_help_shows_defaults(capsys, monkeypatch):
    out = wide_help(capsys, monkeypatch, "synthetic")
    for default in ("[default: 100]", "[default: 112]", "[default: 4", "[default: 8]", "[default: test]"):
        assert default in out, default
    assert "--no-videos" in out and "--json" in out


def test_ask_help_shows_defaults_and_flags(capsys, monkeypatch):
    out = wide_help(capsys, monkeypatch, "ask")
    assert "[default: 256]" in out and "[default: auto]" in out and "VIDQA_MODEL" in out
    assert "--no-cache" in out and "--no-no-cache" not in out and "--no-json" not in out


def test_synthetic_command(capsys, tmp_path):
    code, out, err = run(capsys, "synthetic", tmp_path, "--videos", "2", "--no-videos", "--json")
    assert code == 0, err
    assert json.loads(out)["videos"] == 2 and (tmp_path / "test_qa.json").is_file()
    code, _, err = run(capsys, "synthetic", tmp_path, "--size", "63")
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_chat_json_gives_one_object_per_turn(tmp_path, capsys, voco_dir, monkeypatch):
    vid = media.make_video(tmp_path / "clip.mp4", num_frames=30, fps=10)
    monkeypatch.setattr(sys, "stdin", io.StringIO("what moves?\nand then?\nexit\n"))
    code, out, err = run(capsys, "chat", vid, "--model", voco_dir, "--max-new-tokens", "3", "--json")
    assert code == 0, err
    turns = [json.loads(line) for line in out.splitlines()]
    assert [t["question"] for t in turns] == ["what moves?", "and then?"]
    assert [t["turn"] for t in turns] == [0, 1] and [t["history_turns"] for t in turns] == [0, 1]
    assert all(isinstance(t["answer"], str) and t["frames"] == 3 for t in turns)


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


def test_train_progress_reads_what_train_logs(capsys):
    line = "step 50/2000 loss 1.2345 acc 0.250 held-out 0.300 lr 1.00e-03 123 samples/s"
    m = train_cmd.STEP_LINE.search(line)
    assert m and m.groups() == ("50", "2000", "1.2345", "0.250", "0.300", "123")
    assert train_cmd.STEP_LINE.search("step 4/4 loss 3.3437 acc 0.000 lr 1.46e-04 0 samples/s")
    bar = train_cmd._StepBar(2000, timed=False)
    with bar:
        bar(line)
        bar("resumed from x at step 3")
    assert bar.progress.tasks[0].completed == 50 and "123 samples/s" in bar.progress.tasks[0].fields["stats"]


def test_gpus_option_is_dropped_for_torchrun():
    assert without_option(["index", "--gpus", "2", "d", "--gpus=3", "--json"], "--gpus") == ["index", "d", "--json"]


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
