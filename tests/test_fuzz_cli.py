"""Fuzzing `vidqa ask`'s numeric options and question text (hypothesis, derandomized): every outcome is an
answer (0), a clean failure (1) or a usage error (2), never an internal error or a traceback."""

import math

import media
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run

HOSTILE_INTS = st.one_of(st.integers(-3, 12), st.sampled_from([0, -1, 2 ** 31, 2 ** 63, 2 ** 64, 10 ** 20, -10 ** 20]))
HOSTILE_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-320, 1e308]),
                           st.floats(0, 5))
MARKUP = st.sampled_from(["[/]", "[bold]", "[dQw4w9WgXcQ]", "</s>", "<image>", "<voco>", "<|start_header_id|>",
                          "<|eot_id|>", "\x00", "\x1b[31m", "\udcff", "\r\n", "{question}"])
QUESTIONS = st.lists(st.one_of(st.text(max_size=12), MARKUP), min_size=0, max_size=5).map("".join)

OPTIONS = {
    "--fps": HOSTILE_FLOATS, "--num-frames": HOSTILE_INTS, "--max-frames": HOSTILE_INTS, "--start": HOSTILE_FLOATS,
    "--end": HOSTILE_FLOATS, "--max-new-tokens": HOSTILE_INTS, "--temperature": HOSTILE_FLOATS,
    "--top-p": HOSTILE_FLOATS, "--seed": HOSTILE_INTS, "--tokens-per-frame": HOSTILE_INTS,
    "--batch-size": HOSTILE_INTS,
}


def _fmt(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(value) if isinstance(value, float) else str(value)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return media.make_video(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=20, fps=10)


@pytest.fixture(scope="module")
def loaded_once():
    """Each model the fuzzer asks for is loaded once (the run stays well under a minute)."""
    from vidqa import library

    real, seen = library.load_model, {}

    def load(model, compute):
        if (model, compute) not in seen:
            seen[(model, compute)] = real(model, compute)
        return seen[(model, compute)]

    library.load_model = load
    yield
    library.load_model = real


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(question=QUESTIONS, options=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys})))
def test_ask_never_fails_internally(capsys, clip, voco_dir, loaded_once, question, options):
    args = ["ask", str(clip), question, "--model", str(voco_dir), "--json", "--no-cache", "--device", "cpu"]
    if "--max-new-tokens" not in options:
        args += ["--max-new-tokens", "2"]
    for name, value in options.items():
        args.append(f"{name}={_fmt(value)}")  # = : a negative value is not read as an option
    code, _, err = run(capsys, *args)
    assert code in (0, 1, 2), (args, err)
    assert "internal error" not in err and "Traceback" not in err, (args, err)
