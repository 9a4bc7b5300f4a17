"""`vidqa.cli.train`: the train command's help and the progress it reads from the training log."""


from cli_helpers import wide_help

from vidqa.cli import train as train_cmd


def test_train_help_shows_defaults(capsys, monkeypatch):
    out = wide_help(capsys, monkeypatch, "train")
    for default in ("[default: voco]", "[default: synthetic]", "[default: 2000]", "[default: 32]",
                    "[default: 0.001]", "[default: 4000]", "[default: 300]", "[default: 100]", "[default: auto]"):
        assert default in out, default
    assert "voco|mini|full|pool" in out and "[required]" in out
    for flag in ("--freeze-vision", "--grad-checkpointing", "--pack"):
        assert flag in out and "--no-" + flag[2:] not in out  # a flag, not a --x/--no-x pair


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


def test_train_speed_flags_are_shown_and_bad_values_refused(capsys, monkeypatch, tmp_path):
    from cli_helpers import one_line_error, run

    out = wide_help(capsys, monkeypatch, "train")
    for flag in ("--checkpointing", "--compile", "--adam", "--no-reshard", "--prefetch", "--attention"):
        assert flag in out, flag
    assert "sdpa|flex" in out and "[default: sdpa]" in out and "--no-compile" not in out
    for extra, needle in ((["--checkpointing", "some"], "--checkpointing"), (["--prefetch", "-1"], "--prefetch")):
        code, _, err = run(capsys, "train", "--base", tmp_path / "none", "--data", tmp_path / "d.json",
                           "--out", tmp_path / "o", *extra)
        one_line_error(code, err, needle)
