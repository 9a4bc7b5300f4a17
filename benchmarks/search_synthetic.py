"""How often `vidqa search` ranks first the synthetic clip that holds a queried object, against chance.

    python benchmarks/search_synthetic.py --model tiny-voco --clips 24 --out results.json

Writes ``--clips`` synthetic clips (64 px, 8 s, seed ``--seed``), indexes them at 1 fps, and for every
"<colour> <shape>" that appears in exactly one clip (from the clips' annotations: a shape's first
colour, or the colour it turns) asks ``search.rank`` for the best clip. Reports top-1 and top-3 hit
rates, the mean reciprocal rank, and chance (1/clips, 3/clips). Few queries are in exactly one clip
(about one per six clips), so it also asks every query that some clip, and at most half of them,
shows: ``any_top1`` is how often the first clip shows it, against ``any_chance_top1`` (the mean share
of clips that show the query). Deterministic for a seed (CPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from vidqa import library, search, synthetic
from vidqa.options import ComputeOptions, ModelOptions
from vidqa.store import Store
from vidqa.video import Sampling


def shown(specs: list[dict], names: list[str]) -> dict[str, set[str]]:
    """query -> the clips (video stems) that show it."""
    where = defaultdict(set)
    for spec, name in zip(specs, names):
        for s in spec["shapes"]:
            for colour in {s["colour"], s.get("new_colour")} - {None}:
                where[f"a {colour} {s['shape']}"].add(name)
    return dict(sorted(where.items()))


def queries(specs: list[dict], names: list[str]) -> dict[str, str]:
    """query -> the one clip (video stem) that shows it."""
    return {q: next(iter(v)) for q, v in shown(specs, names).items() if len(v) == 1}


def evaluate(model: str, clips: int, seed: int, work: Path, device: str = "auto", template: str | None = None) -> dict:
    qa = library.load_model(ModelOptions(model), ComputeOptions(device=device))
    synthetic.generate(work, n_videos=clips, seed=seed, size=64, workers=1)
    specs = json.loads((work / "test_clips.json").read_text())
    videos = library.find_videos([work / "videos"])
    names = [f"synth{int(s['index']):05d}" for s in specs]
    store, sampling = Store(work / "store"), Sampling(fps=1.0)
    library.index_videos(qa, store, videos, sampling)
    named, _ = search.indexed(qa, store, videos, sampling)
    where = {q: v for q, v in shown(specs, names).items() if len(v) <= len(names) // 2}
    top1 = top3 = any1 = 0
    rr = 0.0
    t0 = time.perf_counter()
    for q, want in where.items():
        hits = search.rank(qa, named, q, top_k=len(named), evidence=0, template=template)
        order = [Path(h.video).stem for h in hits]
        any1 += order[0] in want
        if len(want) == 1:
            r = order.index(next(iter(want))) + 1
            top1 += r == 1
            top3 += r <= 3
            rr += 1 / r
    seconds = time.perf_counter() - t0
    n, m = max(1, len(queries(specs, names))), max(1, len(where))
    return {"model": model, "template": template, "clips": clips, "seed": seed, "queries": len(queries(specs, names)),
            "top1": top1 / n, "top3": top3 / n, "mrr": rr / n, "chance_top1": 1 / clips, "chance_top3": min(1.0, 3 / clips),
            "any_queries": len(where), "any_top1": any1 / m,
            "any_chance_top1": sum(len(v) for v in where.values()) / len(names) / m,
            "search_s_per_query": seconds / m}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", nargs="+", default=["tiny-voco", "tiny-mini"])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--seed", type=int, default=31000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--template", default=None,
                    help='one yes/no question for every model, e.g. "does {query} appear?" (the demo models\' '
                         'existence question, their scoring before their colour questions)')
    args = ap.parse_args()
    results = []
    for m in args.model:
        with tempfile.TemporaryDirectory() as d:
            res = evaluate(m, args.clips, args.seed, Path(d), template=args.template)
        print(json.dumps(res))
        results.append(res)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
