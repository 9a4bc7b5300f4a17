"""`vidqa.cli.synthetic`: the synthetic-set command and its help."""

import json

from cli_helpers import run, wide_help


def test_synthetic_help_shows_defaults(capsys, monkeypatch):
    out = wide_help(capsys, monkeypatch, "synthetic")
    for default in ("[default: 100]", "[default: 112]", "[default: 4", "[default: 8]", "[default: test]"):
        assert default in out, default
    assert "--no-videos" in out and "--json" in out


def test_synthetic_command(capsys, tmp_path):
    code, out, err = run(capsys, "synthetic", tmp_path, "--videos", "2", "--no-videos", "--json")
    assert code == 0, err
    assert json.loads(out)["videos"] == 2 and (tmp_path / "test_qa.json").is_file()
    code, _, err = run(capsys, "synthetic", tmp_path, "--size", "63")
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
