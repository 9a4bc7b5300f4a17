"""The bench report: metrics over the answered questions, counts of the rest, efficiency and the
judge's verdicts, merged from every prediction file of a run's folder; and its closing table."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from rich.console import Group
from rich.table import Table
from rich.text import Text

from vidqa.bench.datasets import Dataset, Item
from vidqa.bench.files import read_records, read_settings, write_json_atomic
from vidqa.bench.judge import JUDGE_PROTOCOL, Judge, judge_records
from vidqa.bench.metrics import score
from vidqa.bench.run import group_by_video


def collect_records(out: Path) -> tuple[dict[str, dict], list[str]]:
    """Every prediction file in ``out``, merged by id: a record with a prediction beats an error record;
    among several, the first file (sorted) wins."""
    files = sorted(out.glob("predictions*.jsonl"))
    merged: dict[str, dict] = {}
    for f in files:
        for r in read_records(f):
            rid = str(r["id"])
            old = merged.get(rid)
            if old is None or (old.get("prediction") is None and r.get("prediction") is not None):
                merged[rid] = r
    return merged, [str(f) for f in files]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 3)


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 6) if d else None


def build_report(dataset: Dataset, selection: list[Item], records: dict[str, dict], settings: dict, *,
                 judge: Judge | None = None, verdicts: dict[str, dict] | None = None,
                 files: list[str] | None = None, out: Path | None = None) -> dict:
    """Metrics over the selection's answered questions, counts of the rest, efficiency, judge."""
    answered, errors, pending = [], [], 0
    missing = [v for v, _ in group_by_video(selection) if dataset.video_path(v) is None]
    missing_set = set(missing)
    for it in selection:
        r = records.get(it.id)
        if it.video in missing_set:
            continue
        if r is None:
            pending += 1
        elif r.get("prediction") is None:
            errors.append(r)
        else:
            answered.append((it, r))
    n = len(answered)
    em = [score(r["prediction"], it.answer) for it, r in answered]  # recomputed: the rule is the code's, now
    metrics = {"answered": n, "exact_match": _rate(sum(m["exact_match"] for m in em), n),
               "contains": _rate(sum(m["contains"] for m in em), n)}
    per_cat: dict[str, dict] = {}
    cat_rows: dict[Any, list[int]] = {}
    for k, (it, _) in enumerate(answered):
        if it.category is not None:
            cat_rows.setdefault(it.category, []).append(k)
    for cat in sorted(cat_rows, key=lambda c: (isinstance(c, str), c if isinstance(c, int) else str(c))):
        rows = cat_rows[cat]
        entry = {"category_id": cat, "answered": len(rows),
                 "exact_match": _rate(sum(em[k]["exact_match"] for k in rows), len(rows)),
                 "contains": _rate(sum(em[k]["contains"] for k in rows), len(rows))}
        if verdicts is not None:
            vs = [verdicts.get(answered[k][1]["id"], {}) for k in rows]
            yes, no = sum(v.get("pred") == "yes" for v in vs), sum(v.get("pred") == "no" for v in vs)
            entry["judge_accuracy"] = _rate(yes, yes + no)
            entry["judge_score"] = _mean([int(v["score"]) for v in vs if "score" in v])
        per_cat[dataset.category_name(cat)] = entry

    judge_block = None
    if judge is not None and verdicts is not None:
        vs = [verdicts.get(r["id"], {"error": "not judged"}) for _, r in answered]
        yes, no = sum(v.get("pred") == "yes" for v in vs), sum(v.get("pred") == "no" for v in vs)
        judge_block = {
            "model": judge.model, "url": judge.url, "protocol": JUDGE_PROTOCOL, "temperature": 0,
            "accuracy": _rate(yes, yes + no),
            "score": round(sum(int(v["score"]) for v in vs if "score" in v) / max(1, yes + no), 4) if yes + no else None,
            "yes": yes, "no": no, "failed": sum("error" in v for v in vs),
            "requests": judge.requests, "cache_hits": judge.cache_hits,
        }

    timings = [r.get("timings") or {} for _, r in answered]
    caches = [r["video_cache"] for _, r in answered if isinstance(r.get("video_cache"), dict)]
    computed = [c for c in caches if not c.get("from_store")]
    comp_frames = sum(c.get("frames", 0) for c in computed)
    comp_s = sum(c.get("vision_s", 0.0) + c.get("compress_s", 0.0) for c in computed)
    load_s = sum(c.get("load_s", 0.0) for c in computed)
    decode_ms = sum(t.get("decode_ms") or 0.0 for t in timings)
    decode_steps = sum(t.get("decode_steps") or 0 for t in timings)
    peaks = [t["peak_gpu_mem_bytes"] for t in timings if t.get("peak_gpu_mem_bytes") is not None]
    kv = [t["kv_bytes_per_frame"] for t in timings if t.get("kv_bytes_per_frame") is not None]
    efficiency = {
        "tokens_per_frame": settings.get("tokens_per_frame"),
        "kv_bytes_per_frame": kv[0] if kv and len(set(kv)) == 1 else _mean(kv),
        "frames_per_question": _mean([t.get("frames", 0) for t in timings]),
        "videos_compressed": len(computed),
        "videos_from_store": len(caches) - len(computed),
        "compress_frames_per_s": round(comp_frames / comp_s, 2) if comp_s > 0 else None,  # vision tower + method
        "decode_and_compress_frames_per_s": round(comp_frames / load_s, 2) if load_s > 0 else None,  # + video decoding
        "ttft_ms_mean": _mean([t["ttft_ms"] for t in timings if t.get("ttft_ms") is not None]),
        "ttft_ms_p50": _pct([t["ttft_ms"] for t in timings if t.get("ttft_ms") is not None], 0.5),
        "ttft_ms_p90": _pct([t["ttft_ms"] for t in timings if t.get("ttft_ms") is not None], 0.9),
        "ms_per_token": round(decode_ms / decode_steps, 3) if decode_steps else None,
        "answer_tokens_mean": _mean([t.get("answer_tokens", 0) for t in timings]),
        "peak_gpu_mem_bytes": max(peaks) if peaks else None,
    }
    videos = group_by_video(selection)
    report = {
        "dataset": dataset.name, "title": dataset.title, "split": dataset.split, "data": str(dataset.root),
        "format": dataset.format, "annotations": dataset.files,
        "model": settings.get("model"), "method": settings.get("method"), "dtype": settings.get("dtype"),
        "device": settings.get("device"), "prompt": settings.get("prompt"),
        "prompt_source": settings.get("prompt_source"),
        "max_new_tokens": settings.get("max_new_tokens"), "sampling": settings.get("sampling"),
        "questions": {"selected": len(selection), "answered": n, "errors": len(errors), "pending": pending,
                      "missing_video": sum(1 for it in selection if it.video in missing_set)},
        "videos": {"selected": len(videos), "missing": len(missing), "missing_names": missing[:20],
                   "failed": sorted({r["video"] for r in errors if str(r.get("error", "")).startswith("video:")})[:20]},
        "metrics": metrics,
        "per_category": per_cat,
        "judge": judge_block,
        "efficiency": efficiency,
        "metric_rule": "normalize: NFKC, lowercase, delete apostrophes, other Unicode punctuation -> space, drop "
                       "a/an/the, collapse whitespace; exact_match: equal after normalize; contains: normalized "
                       "gold is a whole-word substring of the normalized prediction",
        "predictions": files or [],
        "out": str(out) if out else None,
    }
    return report


def write_judgements(out: Path, judge: Judge, records: list[dict], verdicts: dict[str, dict]) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge.model)
    path = out / f"judge.{safe}.jsonl"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            v = verdicts.get(r["id"])
            if v is not None:
                f.write(json.dumps({"id": r["id"], "judge_model": judge.model, **v}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def report_for(dataset: Dataset, selection: list[Item], out: Path, *, records: dict[str, dict] | None = None,
               files: list[str] | None = None, judge: Judge | None = None, judge_workers: int = 8,
               on_judged: Callable[[], None] | None = None, write: bool = True) -> dict:
    """Collect the prediction files of ``out`` (or the given records), judge if asked, build the report."""
    if records is None:
        records, files = collect_records(out)
    settings = read_settings(out)
    verdicts = None
    if judge is not None:
        wanted = {it.id for it in selection}
        answered = [r for rid, r in records.items() if rid in wanted and r.get("prediction") is not None]
        verdicts = judge_records(judge, answered, judge_workers, on_judged)
        write_judgements(out, judge, answered, verdicts)
    report = build_report(dataset, selection, records, settings, judge=judge, verdicts=verdicts, files=files,
                          out=out)
    if write:
        write_json_atomic(out / "report.json", report)
    return report


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def render_table(report: dict):
    """The closing view: a title line, a rich table of accuracy (all, per category, judge), then
    efficiency and counts, one line each."""
    q = report["questions"]
    title = Text.assemble((f"vidqa bench {report['dataset']} ({report['split']})", "bold"),
                          f": {q['answered']} of {q['selected']} questions answered, "
                          f"{report.get('method') or '?'} / {Path(str(report.get('model') or '?')).name}")
    table = Table()
    table.add_column("")
    table.add_column("n", justify="right")
    table.add_column("exact match", justify="right")
    table.add_column("contains", justify="right")
    judged = report.get("judge") is not None
    if judged:
        table.add_column("judge acc", justify="right")
        table.add_column("judge score", justify="right")
    m = report["metrics"]
    row = ["all", str(m["answered"]), _fmt_pct(m["exact_match"]), _fmt_pct(m["contains"])]
    if judged:
        j = report["judge"]
        row += [_fmt_pct(j["accuracy"]), "-" if j["score"] is None else f"{j['score']:.2f}"]
    table.add_row(*row, style="bold")
    for name, c in report["per_category"].items():
        row = [f"  {name}", str(c["answered"]), _fmt_pct(c["exact_match"]), _fmt_pct(c["contains"])]
        if judged:
            row += [_fmt_pct(c.get("judge_accuracy")),
                    "-" if c.get("judge_score") is None else f"{c['judge_score']:.2f}"]
        table.add_row(*row)
    e = report["efficiency"]
    peak = e["peak_gpu_mem_bytes"]
    lines = [
        f"{e['tokens_per_frame']} tokens/frame, {e['kv_bytes_per_frame'] or 0:,.0f} KV bytes/frame, "
        f"{e['frames_per_question'] or 0:.1f} frames/question",
        ("compression " + ("n/a" if e["compress_frames_per_s"] is None else f"{e['compress_frames_per_s']:.1f} frames/s")
         + f" ({e['videos_compressed']} videos compressed, {e['videos_from_store']} from the store)"),
        f"first token {e['ttft_ms_mean'] or 0:.1f} ms mean, {e['ttft_ms_p50'] or 0:.1f} p50; "
        f"{e['ms_per_token'] or 0:.2f} ms/token; peak GPU memory "
        + ("n/a (CPU)" if peak is None else f"{peak / 2**30:.2f} GiB"),
        f"{q['pending']} pending, {q['errors']} errors, {q['missing_video']} questions on "
        f"{report['videos']['missing']} missing videos",
    ]
    if judged:
        j = report["judge"]
        lines.append(f"judge {j['model']} ({j['protocol']} protocol): {j['yes']} yes, {j['no']} no, "
                     f"{j['failed']} unparsed; {j['requests']} requests, {j['cache_hits']} from the cache")
    return Group(title, table, *(Text(line, style="dim") for line in lines))
