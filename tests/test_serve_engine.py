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
