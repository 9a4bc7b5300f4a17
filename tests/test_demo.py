"""The built-in demo models answer the shipped example clips correctly, through `vidqa ask`, offline, on CPU."""

import json
from pathlib import Path

import pytest

from vidqa.checkpoint import BUILTIN, builtin_dir, resolve
from vidqa.cli import main

EXAMPLES = Path(__file__).parent.parent / "examples"
REPORT = json.loads((EXAMPLES / "questions.json").read_text())
CASES = [(name, ex) for name in BUILTIN for ex in REPORT["examples"][name]]


def test_builtin_names_resolve_to_the_packaged_models():
    for name in BUILTIN:
        assert resolve(name) == builtin_dir(name)
        assert json.loads((builtin_dir(name) / "config.json").read_text())["vidqa_demo"].startswith("vidqa demo model")


@pytest.mark.parametrize("name,example", CASES, ids=[f"{n}-{e['category']}" for n, e in CASES])
def test_demo_model_answers_the_example(capsys, name, example):
    code = main(["ask", str(EXAMPLES / example["video"]), example["question"], "--model", name, "--json",
                 "--device", "cpu", "--no-cache", "--max-new-tokens", "4"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["answer"].strip() == example["answer"]


def test_readme_main_job_is_one_of_the_checked_examples():
    first = (EXAMPLES.parent / "README.md").read_text().split("```bash\n", 1)[1].splitlines()[0]
    checked = {f'vidqa ask examples/{e["video"]} "{e["question"]}" --model {n}' for n, e in CASES}
    assert any(c in first for c in checked), first
