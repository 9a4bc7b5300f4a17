"""Search scoring: yes/no and answer token ids, the probes (the demo models' colour questions), batched
scores equal one-at-a-time scores through Method.prefill_batch, the batch size, parallel store reads,
ranking and per-frame evidence, the question templates, and the synthetic-set evaluation
(benchmarks/search_synthetic.py)."""

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
    own = search.score_probes(demo_qa, [best.select([i]) for i in range(best.num_frames)],
                              search.probes_for("a green square", "tiny-voco"))
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
    assert res["any_queries"] >= res["queries"] and 0 <= res["any_top1"] <= 1 and 0 < res["any_chance_top1"] <= 0.5


def test_probes_for_demo_models_ask_their_colour_questions():
    probes = search.probes_for("A red  Circle", "tiny-voco")
    assert [p.question for p in probes] == [q.format(shape="circle") for q in search.DEMO_COLOUR_QUESTIONS]
    assert {p.answer for p in probes} == {"red"} and all("red" not in p.others and len(p.others) > 3 for p in probes)
    two = search.probes_for("a red and blue square", "tiny-mini")
    assert {p.answer for p in two} == {"red", "blue"} and len(two) == 2 * len(search.DEMO_COLOUR_QUESTIONS)
    # anything else falls back to the existence question; other models and templates to yes/no
    assert search.probes_for("a dog", "tiny-voco") == [search.Probe("does a dog appear?")]
    assert search.probes_for("a red circle moving left", "tiny-voco") == [search.Probe("does a red circle moving left appear?")]
    assert search.probes_for("a red circle", "some/model") == [search.Probe(search.TEMPLATE.format(query="a red circle"))]
    assert search.probes_for("a red circle", "tiny-voco", "Is there {query}?") == [search.Probe("Is there a red circle?")]


def test_choice_ids(demo_qa):
    tok = demo_qa.tokenizer
    mine, rest = search.choice_ids(tok, "red", ("blue", "green"))
    assert tok.encode(" red", add_special_tokens=False)[0] in mine and not set(mine) & set(rest)
    assert tok.encode(" blue", add_special_tokens=False)[0] in rest
    assert search.choice_ids(tok, "yes", ("no",)) == search.answer_ids(tok)


def test_probe_score_is_the_answers_share(demo_qa, caches):
    cache = caches[1][1]
    probe = search.probes_for("a red circle", "tiny-voco")[0]
    p = demo_qa.method.prefill(cache, probe.question)
    with torch.inference_mode():
        out = demo_qa.llm(input_ids=p.input_ids, position_ids=p.position_ids, past_key_values=p.past_key_values,
                          use_cache=True)
    probs = torch.softmax(out.logits[0, -1].float(), -1)
    mine, rest = search.choice_ids(demo_qa.tokenizer, probe.answer, probe.others)
    want = float(probs[mine].sum() / (probs[mine].sum() + probs[rest].sum()))
    assert search.score_caches(demo_qa, [cache], probe)[0] == pytest.approx(want, abs=1e-6)
    both = search.score_probes(demo_qa, [cache], [probe, search.Probe("does a red circle appear?")])[0]
    assert both == pytest.approx((want + search.score_caches(demo_qa, [cache], "does a red circle appear?")[0]) / 2)


def test_scoring_goes_through_prefill_batch_once_per_group(demo_qa, caches, monkeypatch):
    calls = []
    real = demo_qa.method.prefill_batch

    def spy(cs, question):
        calls.append(len(cs))
        return real(cs, question)

    monkeypatch.setattr(demo_qa.method, "prefill_batch", spy)
    cs = [c for _, c in caches] + [caches[0][1].select([0, 1])]
    search.score_caches(demo_qa, cs, "does a red circle appear?")
    assert sorted(calls) == [1, 4]
    calls.clear()
    search.score_caches(demo_qa, cs, "does a red circle appear?", batch_size=3)
    assert sorted(calls) == [1, 1, 3]


def test_prefill_batch_default_stacks_the_per_video_prefills(demo_qa, caches):
    from vidqa.methods.base import Method

    cs = [c for _, c in caches[:3]]
    q = "does a red circle appear?"
    got = Method.prefill_batch(demo_qa.method, cs, q)
    one = [demo_qa.method.prefill(c, q) for c in cs]
    assert got.position_ids.shape[0] == 3 and torch.equal(got.position_ids[1], one[1].position_ids[0])
    for i, p in enumerate(one):
        if p.input_ids is not None:
            assert torch.equal(got.input_ids[i], p.input_ids[0])
        for mine, theirs in zip(got.past_key_values.layers, p.past_key_values.layers):
            assert torch.equal(mine.keys[i], theirs.keys[0]) and torch.equal(mine.values[i], theirs.values[0])


def test_batch_size_for(demo_qa, caches, monkeypatch):
    cache = caches[0][1]
    assert search.batch_size_for(demo_qa, cache, 20, 1000) == search.CPU_BATCH
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(demo_qa, "device", torch.device("cuda"), raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 140 * 2**30))
    big = search.batch_size_for(demo_qa, cache, 20, 10**6)
    assert big == search.MAX_BATCH  # a tiny model's caches: the cap
    assert search.batch_size_for(demo_qa, cache, 20, 10) == 10  # never more than there are
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 140 * 2**30))
    assert 1 <= search.batch_size_for(demo_qa, cache, 20, 10**6) < big  # bounded by the free memory


def test_to_device_keeps_every_tensor(caches):
    cs = [c for _, c in caches]
    moved = search._to_device(cs, "cpu")
    for a, b in zip(cs, moved):
        assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
        assert b.timestamps == a.timestamps and b.meta == a.meta


def test_to_device_takes_caches_some_of_which_are_there_already(caches):
    """A server's search mixes its hot caches (on the GPU) with caches read from the store (host):
    the ones already there stay, the rest are copied (the meta device stands in for the GPU here)."""
    cs = [c for _, c in caches]
    mixed = [cs[0].to("meta"), *cs[1:]]
    moved = search._to_device(mixed, "meta")
    assert all(t.device.type == "meta" for c in moved for t in c.tensors.values())
    assert all(b.tensors[k].shape == a.tensors[k].shape for a, b in zip(cs, moved) for k in a.tensors)
    assert moved[0].tensors["keys"] is mixed[0].tensors["keys"]  # already there: not copied


def test_indexed_reads_in_parallel_in_order(demo_qa, tmp_path):
    from vidqa import library

    store = Store(tmp_path / "store")
    sampling = Sampling(fps=1.0)
    clips = [CLIPS / f"shapes0{i}.mp4" for i in (2, 0, 3)]
    library.index_videos(demo_qa, store, clips[:1] + clips[2:], sampling)
    seq = search.indexed(demo_qa, store, clips, sampling, workers=1)
    par = search.indexed(demo_qa, store, clips, sampling, workers=4)
    assert [v for v, _ in par[0]] == [v for v, _ in seq[0]] == [str(clips[0]), str(clips[2])]
    assert par[1] == seq[1] == [str(clips[1])]
    for (_, a), (_, b) in zip(seq[0], par[0]):
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_the_methods_own_prefill_batch_equals_the_default(demo_qa, caches):
    """A method's batched hook (VoCo's, once it has one) gives exactly the stacked per-video prefills."""
    from vidqa.methods.base import Method

    cs = [c for _, c in caches[:3]]
    q = "does a red circle appear?"
    a, b = demo_qa.method.prefill_batch(cs, q), Method.prefill_batch(demo_qa.method, cs, q)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.position_ids, b.position_ids)
    for x, y in zip(a.past_key_values.layers, b.past_key_values.layers):
        assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


def test_indexed_finds_what_memory_holds_without_the_read_pool(demo_qa, tmp_path, monkeypatch):
    """A server's hot caches (memoised hashes) are found on the calling thread: no pool, no store read;
    the rest (here one video the store never saw) are read as before, in the order given."""
    from vidqa import library

    store = Store(tmp_path / "store")
    sampling = Sampling(fps=1.0)
    clips = [CLIPS / f"shapes0{i}.mp4" for i in (2, 0, 3)]
    library.index_videos(demo_qa, store, [clips[0], clips[2]], sampling)
    held = {}
    for v, c in search.indexed(demo_qa, store, clips, sampling)[0]:
        held[store.key(v, library.cache_settings(demo_qa, sampling))] = c
    pools = []
    real_pool = search.ThreadPoolExecutor
    monkeypatch.setattr(search, "ThreadPoolExecutor", lambda *a, **k: pools.append(1) or real_pool(*a, **k))
    with monkeypatch.context() as m:
        m.setattr(Store, "get", lambda *a, **k: pytest.fail("read the store"))
        found, missing = search.indexed(demo_qa, store, clips[::2], sampling, hot=held.get, workers=4)
    assert [v for v, _ in found] == [str(clips[0]), str(clips[2])] and missing == [] and pools == []
    assert all(c is held[k] for (_, c), k in zip(found, held))
    found, missing = search.indexed(demo_qa, store, clips, sampling, hot=held.get, workers=4)
    assert [v for v, _ in found] == [str(clips[0]), str(clips[2])] and missing == [str(clips[1])]
    assert pools == []  # one video left: read on this thread
