"""`vidqa.bench.run`: shards, bad options, resumability, one compression per video, ranks."""

import json
from pathlib import Path

import pytest

import media
from vidqa import bench as B
from bench_fixtures import (PRESENT, QA, build_format, count_compress, fake_answers, lines, msrvtt_dir,
                            one_line_error, run, shared_model, video)  # noqa: F401 (fixtures)


def test_shard_split_is_by_video_and_covers_everything(tmp_path):
    ds = B.load_dataset("msrvtt", build_format("qa-int", tmp_path / "d"))
    parts = [B.select(ds.items, None, (i, 3)) for i in range(3)]
    assert sorted(it.id for p in parts for it in p) == sorted(it.id for it in ds.items)
    for i, p in enumerate(parts):
        for it in p:
            assert all(B.shard_of(o.video, 3) == i for o in ds.items if o.video == it.video)
    assert B.select(ds.items, 3) == ds.items[:3]
    with pytest.raises(Exception, match="I/N"):
        B.parse_shard("3/3")


def test_run_resume_and_torn_line(capsys, tmp_path, voco_dir, count_compress):
    """The real path (model loaded by the CLI, real decoding): --limit, a rerun continues, a torn line."""
    root = msrvtt_dir(tmp_path / "d")
    out = tmp_path / "out"
    base = ["bench", "msrvtt", "--data", root, "--model", voco_dir, "--out", out, "--max-new-tokens", "2",
            "--device", "cpu", "--json"]
    code, stdout, err = run(capsys, *base, "--limit", "3")
    assert code == 0, err
    report = json.loads(stdout)
    first = lines(out / "predictions.jsonl")
    assert [r["id"] for r in first] == ["0", "1", "2"]
    assert report["questions"] == {"selected": 3, "answered": 3, "errors": 0, "pending": 0, "missing_video": 0}
    for r in first:
        assert set(r) >= {"id", "video", "question", "answer", "prediction", "metrics", "timings"}
        assert set(r["metrics"]) == {"exact_match", "contains"}
        assert r["timings"]["tokens_per_frame"] == 2 and r["timings"]["answer_tokens"] <= 2
        assert r["timings"]["peak_gpu_mem_bytes"] is None  # CPU
    assert [Path(p).name for p in count_compress] == ["video7010.mp4", "video7011.mp4"]

    # interrupted mid-write: a torn last line
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": "3", "video": "7011", "quest')
    code, stdout, err = run(capsys, *base)
    assert code == 0, err
    report = json.loads(stdout)
    recs = lines(out / "predictions.jsonl")  # parses: the torn line is gone
    ids = [r["id"] for r in recs]
    assert ids[:3] == ["0", "1", "2"] and len(ids) == len(set(ids)) == len(QA) - 1  # no duplicates, 7013 missing
    assert [r["prediction"] for r in recs[:3]] == [r["prediction"] for r in first]  # kept, not redone
    assert report["questions"] == {"selected": 8, "answered": 7, "errors": 0, "pending": 0, "missing_video": 1}
    assert report["videos"]["missing_names"] == ["7013"]
    # each video compressed once over both runs (7011 came from the store for its second question)
    assert sorted(Path(p).name for p in count_compress) == sorted(f"video{v}.mp4" for v in PRESENT)
    e = report["efficiency"]
    assert e["tokens_per_frame"] == 2 and e["kv_bytes_per_frame"] == 2 * 2 * 2 * 2 * 16 * 4
    assert e["compress_frames_per_s"] > 0 and e["ttft_ms_mean"] > 0 and e["peak_gpu_mem_bytes"] is None
    assert e["videos_compressed"] + e["videos_from_store"] == 5  # 7011 loaded again after the resume
    assert set(report["per_category"]) == {"what", "who", "how", "when", "where"}
    assert 0.0 <= report["metrics"]["exact_match"] <= report["metrics"]["contains"] <= 1.0
    assert json.loads((out / "report.json").read_text())["metrics"] == report["metrics"]

    # a third run has nothing to do; another max-new-tokens into the same folder is refused
    code, stdout, err = run(capsys, *base)
    assert code == 0 and len(lines(out / "predictions.jsonl")) == 7
    code, _, err = run(capsys, *[a if a != "2" else "3" for a in base])
    one_line_error(code, err, "max_new_tokens")


def test_videos_compressed_once_and_indexed_library_reused(capsys, tmp_path, shared_model, fake_answers,
                                                           count_compress):
    root = msrvtt_dir(tmp_path / "d")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "a", "--model", "x", "--no-cache",
                       "--json")
    assert code == 0, err
    assert len(count_compress) == len(PRESENT) == len(set(count_compress))  # one compression per video, no store
    count_compress.clear()
    # `vidqa index` first (same sampling): the bench then compresses nothing
    code, _, err = run(capsys, "index", root / "videos", "--model", "x", "--json")
    assert code == 0, err
    assert len(count_compress) == len(PRESENT)
    count_compress.clear()
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "b", "--model", "x", "--json")
    assert code == 0, err
    assert count_compress == []
    e = json.loads(out)["efficiency"]
    assert e["videos_compressed"] == 0 and e["videos_from_store"] == len(PRESENT)


def test_unreadable_video_is_counted_not_fatal(capsys, tmp_path, shared_model, fake_answers):
    root = msrvtt_dir(tmp_path / "d")
    media.make_garbage(root / "videos" / "video7012.mp4")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["questions"]["errors"] == 2 and report["questions"]["answered"] == 5
    assert report["videos"]["failed"] == ["7012"]


def test_shards_and_ranks_merge_to_the_unsharded_report(capsys, tmp_path, shared_model, fake_answers, monkeypatch):
    root = msrvtt_dir(tmp_path / "d")
    common = ["bench", "msrvtt", "--data", root, "--model", "x", "--json"]

    def metrics(report):
        return {k: report[k] for k in ("metrics", "per_category", "questions")}

    code, out, err = run(capsys, *common, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = json.loads(out)

    # --shard I/N, then --merge
    parts = []
    for i in range(3):
        code, out, err = run(capsys, *common, "--out", tmp_path / "sharded", "--shard", f"{i}/3")
        assert code == 0, err
        parts.append(json.loads(out))
    assert sum(p["questions"]["selected"] for p in parts) == len(QA)
    assert not (tmp_path / "sharded" / "report.json").exists()
    names = sorted(p.name for p in (tmp_path / "sharded").glob("predictions*.jsonl"))
    assert names == [f"predictions.part-{i}-of-3.jsonl" for i in range(3)]
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "sharded", "--merge", "--json")
    assert code == 0, err
    assert metrics(json.loads(out)) == metrics(whole)
    assert json.loads((tmp_path / "sharded" / "report.json").read_text())["metrics"] == whole["metrics"]

    # torchrun: RANK/WORLD_SIZE shard automatically; rank 0 waits for the others and merges
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, out, err = run(capsys, *common, "--out", tmp_path / "ranks")
    assert code == 0 and out == "", err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, out, err = run(capsys, *common, "--out", tmp_path / "ranks")
    assert code == 0, err
    assert metrics(json.loads(out)) == metrics(whole)
    assert sorted(p.name for p in (tmp_path / "ranks").glob("*.jsonl")) == [
        "predictions.part-0-of-2.jsonl", "predictions.part-1-of-2.jsonl"]


# ---- the default prompt belongs to the model (issue 14 item 6) ---------------------------------------

class _Method:
    def __init__(self, name):
        self.name = name


class _QA:
    def __init__(self, model_id, method):
        self.model_id, self.method = model_id, _Method(method)


def _model(tmp_path, **extra):
    d = tmp_path / "m"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llava_llama", **extra}))
    return str(d)


def test_the_demo_models_state_their_own_prompt_the_bare_question():
    for name, method in (("tiny-voco", "voco"), ("tiny-mini", "mini")):
        for dataset in ("synthetic", "msrvtt", "activitynet"):
            assert B.resolve_prompt(_QA(name, method), dataset, None) == ("{question}", "checkpoint config.json vidqa_prompt")


def test_a_checkpoint_prompt_per_dataset_and_the_official_fallback(tmp_path):
    own = _model(tmp_path, vidqa_prompt={"msvd": "M: {question}", "default": "D: {question}"})
    assert B.resolve_prompt(_QA(own, "voco"), "msvd", None)[0] == "M: {question}"
    assert B.resolve_prompt(_QA(own, "voco"), "msrvtt", None)[0] == "D: {question}"
    plain = _model(tmp_path / "p")
    voco, source = B.resolve_prompt(_QA(plain, "voco"), "msrvtt", None)
    assert voco == "{question}\nAnswer the question using a single word or phrase." and "model_vqa_loader" in source
    mini, source = B.resolve_prompt(_QA(plain, "mini"), "msvd", None)
    assert mini.startswith("Answer the question based on the video.") and mini.endswith(
        "Answer the question with one complete sentence:\n{question}") and "run_inference_video_qa.py" in source
    act, source = B.resolve_prompt(_QA(plain, "mini"), "activitynet", None)
    assert act != mini and "gymnastics" in act and "_act.py" in source
    # --prompt always wins, and says so
    assert B.resolve_prompt(_QA(own, "voco"), "msvd", "Q: {question}") == ("Q: {question}", "--prompt")


def test_a_bad_checkpoint_prompt_is_a_model_error(tmp_path):
    from vidqa.errors import ModelError

    bad = _model(tmp_path, vidqa_prompt="no placeholder")
    with pytest.raises(ModelError):
        B.resolve_prompt(_QA(bad, "voco"), "msvd", None)


def test_run_json_records_the_prompt_and_its_source(capsys, tmp_path):
    root = msrvtt_dir(tmp_path / "d")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "tiny-voco",
                         "--json", "--limit", "1", "--max-new-tokens", "2")
    assert code == 0, err
    report = json.loads(out)
    assert report["prompt"] == "{question}" and report["prompt_source"] == "checkpoint config.json vidqa_prompt"
    settings = json.loads((tmp_path / "o" / "run.json").read_text())
    assert settings["prompt_source"] == "checkpoint config.json vidqa_prompt"
