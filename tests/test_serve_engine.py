"""The engine: LRU frame caches under two budgets, the allowed roots, store and memory hits, warm-up,
a cancelled answer stops at the next token, and the lanes keep answers apart."""

import threading

import pytest
import torch

from serve_helpers import CLIPS, demo_qa  # noqa: F401 (fixture)
from vidqa.framecache import FrameCache
from vidqa.serve.engine import Cancelled, Engine, FrameLRU, status_of
from vidqa.serve.schema import ChatRequest, RequestError, SamplingFields
from vidqa.errors import ContextError, VideoError
from vidqa.store import Store


def cache(nbytes: int) -> FrameCache:
    return FrameCache("voco", {"k": torch.zeros(nbytes // 4)}, [0.0], 1, {})


def test_lru_host_budget_drops_the_least_recently_used():
    lru = FrameLRU(torch.device("cpu"), gpu_bytes=10_000, host_bytes=300)
    lru.put("a", cache(100))
    lru.put("b", cache(100))
    lru.put("c", cache(100))
    assert lru.get("a") is not None  # a is now the most recent
    lru.put("d", cache(100))
    assert lru.get("b") is None and all(lru.get(k) is not None for k in "acd")
    s = lru.stats()
    assert s["gpu_entries"] == 0 and s["host_bytes"] == 300  # no GPU tier on a CPU device
    lru.put("huge", cache(1000))  # over the budget: not kept, nothing evicted for it
    assert lru.get("huge") is None and lru.stats()["host_entries"] == 3



def test_a_cpu_server_never_pins_host_memory(monkeypatch):
    """Pinning starts CUDA: a server on the CPU keeps its caches pageable even on a GPU machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pytest.fail("pinned"))
    lru = FrameLRU(torch.device("cpu"), 0, 10_000)
    lru.put("a", cache(100))
    assert lru.get("a") is not None and lru.stats()["host_entries"] == 1


def test_lru_gpu_tier_spills_to_host(monkeypatch):
    lru = FrameLRU(torch.device("cpu"), gpu_bytes=200, host_bytes=1000)
    lru.gpu_bytes = 200  # act as if the device were a GPU (the tier logic is the same; .to() is a no-op here)
    lru.put("a", cache(100))
    lru.put("b", cache(100))
    lru.put("c", cache(100))
    assert list(lru.gpu) == ["b", "c"] and list(lru.host) == ["a"]
    assert lru.get("a") is not None


@pytest.fixture()
def engine(demo_qa, tmp_path):
    e = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS, tmp_path], warmup_frames=2)
    yield e
    e.close()


def request(video="shapes00.mp4", question="what colour is the square?", **kw) -> ChatRequest:
    return ChatRequest(video=str(CLIPS / video), question=question, **kw)


def test_paths_must_be_under_an_allowed_root(engine, tmp_path):
    assert engine.check_path(str(CLIPS / "shapes00.mp4")) == (CLIPS / "shapes00.mp4").resolve()
    for path, status in (("/etc/passwd", 403), (str(CLIPS / "nope.mp4"), 404), ("relative.mp4", 400),
                         (str(CLIPS / ".." / ".." / "README.md"), 403)):
        with pytest.raises(RequestError) as e:
            engine.check_path(path)
        assert e.value.status == status, path


def test_default_root_is_the_current_folder(demo_qa, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e = Engine(demo_qa, None)
    assert e.allow_roots == [tmp_path.resolve()]
    e.close()


def test_warm_up_then_ready(engine):
    assert not engine.ready
    engine.warm_up()
    assert engine.ready and engine.warmup_s > 0


def test_compress_once_then_memory_then_store(engine, demo_qa, tmp_path):
    req = request()
    prep = engine.lookup(engine.check_path(req.video), req)
    assert prep.cache is None  # neither in memory nor stored: the compress lane's work
    prep = engine.compute(prep, req)
    assert not prep.from_cache and prep.cache.num_frames == 8
    again = engine.lookup(engine.check_path(req.video), req)
    assert again.from_cache and again.cache is prep.cache  # from memory
    fresh = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS])  # a new process: from the store
    hit = fresh.lookup(fresh.check_path(req.video), req)
    assert hit.from_cache and torch.equal(hit.cache.tensors["keys"], prep.cache.tensors["keys"])
    fresh.close()
    assert engine.answer(prep, req).text == "green"


def test_fewer_frames_when_they_do_not_fit(engine):
    req = request(frames=SamplingFields(fps=1.0, num_frames=8), max_tokens=1937)  # 1937 + the prompt leave room for few frames
    prep = engine.prepare(req)
    assert prep.cache.num_frames < 8 and prep.notes


def test_a_cancelled_answer_stops_at_the_next_token(voco_qa, tmp_path):
    engine = Engine(voco_qa, None, allow_roots=[CLIPS])  # random weights: long answers
    req = request(max_tokens=40)
    prep = engine.prepare(req)
    full = engine.answer(prep, req)
    assert full.stats.tokens > 5
    cancel = threading.Event()
    seen = []

    def emit(delta):
        seen.append(delta)
        cancel.set()  # the client goes away after the first piece

    with pytest.raises(Cancelled):
        engine.answer(prep, req, emit=emit, cancel=cancel)
    assert len(seen) == 1
    assert engine.answer(prep, req).text == full.text  # nothing of the cancelled answer is left behind
    engine.close()


def test_history_fits_like_vidqa_chat(engine):
    req = request(question="what colour is the square?", history=[("how many shapes appear?", "three")], chat=True)
    ans = engine.answer(engine.prepare(req), req)
    assert ans.text and ans.history_dropped == 0


def test_status_of_errors():
    assert status_of(ContextError("too long")).status == 400
    assert status_of(ContextError("too long")).code == "context_length_exceeded"
    assert status_of(VideoError("bad")).status == 422
    assert status_of(RuntimeError("boom")).status == 500
    e = RequestError(403, "no")
    assert status_of(e) is e


# ---- preload at start (issue 15: the first request as fast as the tenth) ---------------------------------

def _stored(engine, video, question="what colour is the square?"):
    """Compress ``video`` through the engine (into its store) and return the request and its store key."""
    from vidqa import library

    req = request(video, question)
    prep = engine.prepare(req)
    settings = library.cache_settings(engine.qa, req.frames.sampling())
    return req, engine.store.key(engine.check_path(req.video), settings), prep


def test_preload_reads_this_models_newest_entries_and_a_request_finds_them(demo_qa, tmp_path, monkeypatch):
    import warnings

    from vidqa import library
    from vidqa.store import CacheWarning

    store = Store(tmp_path / "store")
    maker = Engine(demo_qa, store, allow_roots=[CLIPS], preload=0)
    req0, key0, prep0 = _stored(maker, "shapes00.mp4")
    req1, key1, _ = _stored(maker, "shapes01.mp4")
    _, key2, _ = _stored(maker, "shapes02.mp4")
    # another model's entry (other fingerprint) for the same video: never read
    settings = library.cache_settings(demo_qa, req0.frames.sampling())
    other = {**settings, "model_fingerprint": "0" * 64}
    okey = store.key(CLIPS / "shapes00.mp4", other)
    store.put(okey, prep0.cache, {"source": str(CLIPS / "shapes00.mp4"), "settings": other, "model_id": "other",
                                  "frame_indices": list(range(prep0.cache.num_frames))})
    # a corrupt entry of this model: skipped with one warning
    meta = store.metadata(key2)
    path = store.root / "entries" / key2[:2] / meta["tensors"]["file"]
    path.write_bytes(b"x" * path.stat().st_size)
    maker.close()

    read = []
    real_get = Store.get
    monkeypatch.setattr(Store, "get", lambda self, key, settings=None: read.append(key) or real_get(self, key, settings))
    fresh = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.warm_up()
    assert okey not in read  # the other model's entry was not read
    assert sorted(fresh.preloaded) == sorted([key0, key1])
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1  # the corrupt one
    read.clear()
    hit = fresh.lookup(fresh.check_path(req0.video), req0)
    assert hit.from_cache and read == []  # from memory: the store was not read again
    assert torch.equal(hit.cache.tensors["keys"], prep0.cache.tensors["keys"])
    assert fresh.answer(hit, req0).text == "green"
    fresh.close()


def test_preload_respects_the_budgets_and_the_limit(demo_qa, tmp_path):
    store = Store(tmp_path / "store")
    maker = Engine(demo_qa, store, allow_roots=[CLIPS], preload=0)
    _, key0, prep = _stored(maker, "shapes00.mp4")
    _, key1, _ = _stored(maker, "shapes01.mp4")
    maker.close()
    one = store.entries()[0].bytes
    small = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0,
                   cache_host_bytes=one + one // 2)  # room for one entry only
    small.warm_up()
    assert len(small.preloaded) == 1 and small.memory.stats()["host_entries"] == 1
    small.close()
    limited = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0, preload=1)
    limited.warm_up()
    assert len(limited.preloaded) == 1
    limited.close()
    off = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0, preload=0)
    off.warm_up()
    assert off.preloaded == [] and off.memory.stats()["host_entries"] == 0
    off.close()


# ---- memory tiers: auto GPU budget, pinned host tier ------------------------------------------------------

def test_auto_gpu_budget_is_a_share_of_the_free_memory(monkeypatch):
    from vidqa.serve import engine as eng

    assert eng.auto_gpu_bytes(torch.device("cpu")) == 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 << 30, 140 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 20 << 30)
    assert eng.auto_gpu_bytes(torch.device("cuda:0")) == int(0.6 * (110 << 30))


def test_auto_gpu_budget_is_set_at_warm_up(demo_qa, monkeypatch):
    from vidqa.serve import engine as eng

    e = Engine(demo_qa, None, allow_roots=[CLIPS], warmup_frames=0)  # cache_gpu_bytes: auto by default
    assert e.gpu_auto
    monkeypatch.setattr(eng, "auto_gpu_bytes", lambda device: 12345)
    e.warm_up()
    assert e.memory.gpu_bytes == 12345
    e.close()
    fixed = Engine(demo_qa, None, allow_roots=[CLIPS], warmup_frames=0, cache_gpu_bytes=0)
    fixed.warm_up()
    assert not fixed.gpu_auto and fixed.memory.gpu_bytes == 0
    fixed.close()


def test_host_tier_is_pinned_where_it_can_be_and_falls_back_silently(monkeypatch):
    from vidqa.serve import engine as eng

    pinned = []

    def pin(self):
        pinned.append(self.shape)
        raise RuntimeError("no locked memory")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    c = cache(400)
    host = eng.to_host(c)  # pinning was tried, failed, and the pageable copy is kept
    assert pinned == [c.tensors["k"].shape] and torch.equal(host.tensors["k"], c.tensors["k"])


# ---- one token loop, and an honest split of the time to first token ---------------------------------------

def test_answer_is_videoqa_tokens_and_reports_its_split(engine, demo_qa):
    from vidqa.generate import GenerationConfig

    req = request()
    prep = engine.prepare(req)
    local = "".join(demo_qa.answer(prep.cache, req.question, GenerationConfig(max_new_tokens=req.max_tokens)))
    ans = engine.answer(prep, req)
    assert ans.text == local == "green"
    s = ans.split
    assert s.frames_on == "device" and s.copy_s == 0  # a CPU engine: the cache is where the model is
    assert s.prefill_s > 0 and s.first_token_s == ans.stats.prefill_s
    assert s.total_s == s.copy_s + s.prefill_s + s.first_token_s


def test_videoqa_tokens_cancel_hook_and_timings(voco_qa):
    from vidqa import library
    from vidqa.generate import DecodeStats, GenerationConfig
    from vidqa.video import Sampling

    cache, _, _ = library.load_or_compress(voco_qa, CLIPS / "shapes00.mp4", Sampling(fps=1.0), store=None)
    gen = GenerationConfig(max_new_tokens=20)
    full = list(voco_qa.tokens(cache, "what is here?", gen))
    assert "".join(d for _, d in full) == "".join(voco_qa.answer(cache, "what is here?", gen))
    seen, timings, stats = [], {}, DecodeStats()
    for tok, _ in voco_qa.tokens(cache, "what is here?", gen, stats, cancel=lambda: len(seen) >= 3, timings=timings):
        seen.append(tok)
    assert seen == [t for t, _ in full[:3]] and timings["prefill_s"] > 0


def _two_stored(demo_qa, tmp_path):
    """Two clips indexed into tmp_path/store; the search request over both."""
    from vidqa.serve.schema import SearchRequest

    maker = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], preload=0)
    _stored(maker, "shapes00.mp4")
    _stored(maker, "shapes01.mp4")
    maker.close()
    return SearchRequest(query="a red square", videos=[str(CLIPS / "shapes00.mp4"), str(CLIPS / "shapes01.mp4")])


def test_search_uses_the_caches_the_server_holds_without_reading_the_store(demo_qa, tmp_path, monkeypatch):
    body = _two_stored(demo_qa, tmp_path)
    cold = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0, preload=0)
    want = cold.search(body)  # read from the store
    cold.close()
    engine = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0)
    try:
        engine.warm_up()  # preloads both entries
        read = []
        real_get = Store.get
        monkeypatch.setattr(Store, "get", lambda self, key, settings=None: read.append(key) or real_get(self, key, settings))
        got = engine.search(body)
        assert read == [] and got == want and len(got["data"]) == 2
    finally:
        engine.close()


def test_a_search_keeps_what_it_read_so_the_next_one_reads_nothing(demo_qa, tmp_path, monkeypatch):
    body = _two_stored(demo_qa, tmp_path)
    engine = Engine(demo_qa, Store(tmp_path / "store"), allow_roots=[CLIPS], warmup_frames=0, preload=0)
    try:
        read = []
        real_get = Store.get
        monkeypatch.setattr(Store, "get", lambda self, key, settings=None: read.append(key) or real_get(self, key, settings))
        first = engine.search(body)
        assert len(read) == 2 and engine.memory.stats()["host_entries"] + engine.memory.stats()["gpu_entries"] == 2
        second = engine.search(body)
        assert len(read) == 2 and second == first and len(first["data"]) == 2
    finally:
        engine.close()
