"""The Python API: the example in ``vidqa``'s docstring (the README's) runs as written, and ``import vidqa``
stays light."""

import contextlib
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import vidqa

REPO = Path(__file__).parent.parent


def example() -> str:
    """The indented block of ``vidqa.__doc__``: the five-line example."""
    block = vidqa.__doc__.split("\n\n")[1]
    return textwrap.dedent(block)


def test_the_example_runs_as_written(monkeypatch):
    code = example()
    assert code.startswith("from vidqa import VideoQA, Sampling, GenerationConfig")
    assert len(code.strip().splitlines()) == 5
    monkeypatch.chdir(REPO)  # the example names a shipped clip by its path in the repo
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "example", "exec"), {})
    assert out.getvalue().strip() == "green"  # examples/questions.json: the answer checked for tiny-voco


def test_public_names():
    from vidqa.generate import GenerationConfig
    from vidqa.pipeline import VideoQA
    from vidqa.video import Sampling

    assert (vidqa.VideoQA, vidqa.Sampling, vidqa.GenerationConfig) == (VideoQA, Sampling, GenerationConfig)
    assert issubclass(vidqa.VidqaError, Exception) and vidqa.__version__
    assert set(vidqa.__all__) <= set(dir(vidqa))
    try:
        vidqa.nothing_here
    except AttributeError as e:
        assert "nothing_here" in str(e)
    else:
        raise AssertionError("no AttributeError")


def test_import_and_cli_start_without_torch():
    """`import vidqa` and the CLI's import (what `vidqa --help` needs) load neither torch nor numpy."""
    probe = "import sys, vidqa, vidqa.cli; print(sorted({'torch', 'numpy', 'transformers'} & set(sys.modules)))"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
