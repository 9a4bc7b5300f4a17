"""Search scoring: yes/no token ids, batched scores equal one-at-a-time scores, ranking and per-frame
evidence, the question templates, and the synthetic-set evaluation (benchmarks/search_synthetic.py)."""

import sys
from pathlib import Path

import pytest
import torch

from serve_helpers import CLIPS, demo_qa  # noqa: F401 (fixture)
from vidqa import search
from vidqa.errors import VidqaError
from vidqa.store import Store
from vidqa.video import Sampling, load_frames

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def caches(demo_qa):
    return [(str(CLIPS / f"shapes0{i}.mp4"), demo_qa.compress(load_frames(CLIPS / f"shapes0{i}.mp4", Sampling(fps=1.0))))
            for i in range(4)]


def test_answer_ids(demo_qa):
    yes, no = search.answer_ids(demo_qa.tokenizer)
    assert yes and no and not set(yes) & set(no)
    assert demo_qa.tokenizer.encode("yes", add_special_tokens=False)[0] in yes


def test_questions():
    assert search.question_for("a red  circle", "tiny-voco") == "does a red circle appear?"
    assert search.question_for("A Dog", "some/model") == "Does this video show A Dog? Answer yes or no."
    assert search.question_for("x", "m", "Is there {query}?") == "Is there x?"
    for bad in (("", "m", None), ("x", "m", "no placeholder")):
        with pytest.raises(VidqaError):
            search.question_for(*bad)


def test_batched_scores_equal_one_at_a_time(demo_qa, caches):
    cs = [c for _, c in caches] + [caches[0][1].select([0, 1, 2])]  # two frame counts: two groups
    q = "does a green square appear?"
    batched = search.score_caches(demo_qa, cs, q, batch_size=64)
    single = [search.score_caches(demo_qa, [c], q)[0] for c in cs]
    assert batched == pytest.approx(single, abs=1e-5)
    assert all(0 < s < 1 for s in batched)


def test_scores_are_the_models_yes_probability(demo_qa, caches):
    cache = caches[0][1]
    q = "does a green square appear?"
    p = demo_qa.method.prefill(cache, q)
    with torch.inference_mode():
        out = demo_qa.llm(input_ids=p.input_ids, position_ids=p.position_ids, past_key_values=p.past_key_values,
                          use_cache=True)
    probs = torch.softmax(out.logits[0, -1].float(), -1)
    yes, no = search.answer_ids(demo_qa.tokenizer)
    want = float(probs[yes].sum() / (probs[yes].sum() + probs[no].sum()))
    assert search.score_caches(demo_qa, [cache], q)[0] == pytest.approx(want, abs=1e-6)


def test_rank_and_evidence(demo_qa, caches):
    hits = search.rank(demo_qa, caches, "a green square", top_k=3, evidence=2)
    assert len(hits) == 3 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        stamps = dict(caches)[h.video].timestamps
        assert len(h.times) == 2 and set(h.times) <= set(stamps)
    d = hits[0].as_dict()
    assert set(d) == {"video", "score", "times"}
    # the evidence is each frame's own score, best first
    best = dict(caches)[hits[0].video]
    own = search.score_caches(demo_qa, [best.select([i]) for i in range(best.num_frames)],
                              search.question_for("a green square", "tiny-voco"))
    order = sorted(range(best.num_frames), key=lambda i: -own[i])
    assert hits[0].times == [best.timestamps[i] for i in order[:2]]
    with pytest.raises(VidqaError):
        search.rank(demo_qa, caches, "x", top_k=0)


def test_indexed_finds_stored_caches_only(demo_qa, tmp_path, caches):
    from vidqa import library

    store = Store(tmp_path / "store")
    sampling = Sampling(fps=1.0)
    library.index_videos(demo_qa, store, [CLIPS / "shapes00.mp4"], sampling)
    found, missing = search.indexed(demo_qa, store, [CLIPS / "shapes00.mp4", CLIPS / "shapes01.mp4"], sampling)
    assert [v for v, _ in found] == [str(CLIPS / "shapes00.mp4")] and missing == [str(CLIPS / "shapes01.mp4")]


def test_synthetic_eval_runs(tmp_path, capsys):
    """benchmarks/search_synthetic.py on a few clips: the numbers are well-formed (the rates are in the report)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import search_synthetic

    res = search_synthetic.evaluate("tiny-voco", 6, 5, tmp_path, device="cpu")
    assert res["queries"] >= 1 and 0 <= res["top1"] <= 1 and res["chance_top1"] == pytest.approx(1 / 6)
