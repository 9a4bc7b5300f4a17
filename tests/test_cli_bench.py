"""`vidqa.cli.bench`: the bench command's option checks."""

from bench_fixtures import (PRESENT, QA, build_format, count_compress, fake_answers, lines,  # noqa: F401 (fixtures)
                            msrvtt_dir, one_line_error, run, shared_model, video)


def test_bad_options(capsys, tmp_path):
    root = msrvtt_dir(tmp_path / "d", real=False)
    code, _, err = run(capsys, "bench", "ucf101", "--data", root)
    one_line_error(code, err, "unknown dataset")
    code, _, err = run(capsys, "bench", "msrvtt")
    one_line_error(code, err, "--data")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--prompt", "no placeholder", "--out", tmp_path / "o")
    one_line_error(code, err, "{question}")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--shard", "2/2", "--out", tmp_path / "o")
    one_line_error(code, err, "I/N")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "empty-out", "--merge")
    one_line_error(code, err, "nothing to merge")
