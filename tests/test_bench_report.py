"""`vidqa.bench.report`: the closing table and the metrics of hand-made predictions."""

import json

from bench_fixtures import (fake_answers, msrvtt_dir, run, shared_model)  # noqa: F401 (fixtures)


def test_table_closes_the_run(capsys, tmp_path, shared_model, fake_answers):
    root = msrvtt_dir(tmp_path / "d")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x")
    assert code == 0, err
    for needle in ("exact match", "contains", "what", "who", "tokens/frame", "ms/token", "peak", "7 of 8"):
        assert needle in out, out
    assert "1 videos not found" in err


def test_metrics_on_hand_made_predictions(capsys, tmp_path, shared_model, fake_answers):
    root = msrvtt_dir(tmp_path / "d")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["metrics"] == {"answered": 7, "exact_match": round(3 / 7, 6), "contains": round(5 / 7, 6)}
    cats = report["per_category"]
    assert cats["what"] == {"category_id": 0, "answered": 2, "exact_match": 0.5, "contains": 0.5}
    assert cats["who"] == {"category_id": 1, "answered": 2, "exact_match": 0.0, "contains": 0.5}
    assert cats["when"]["exact_match"] == 1.0 and cats["where"]["contains"] == 1.0
    # the default prompt appends the short-answer instruction; --prompt replaces it
    assert fake_answers[0] == "what is the man holding?\nAnswer the question using a single word or phrase."
    fake_answers.clear()
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o2", "--model", "x", "--json",
                         "--prompt", "Q: {question}\\nA:", "--limit", "1")
    assert code == 0, err
    assert fake_answers == ["Q: what is the man holding?\nA:"]
    assert json.loads(out)["prompt"] == "Q: {question}\nA:"
