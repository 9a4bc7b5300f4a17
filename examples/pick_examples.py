"""Render held-out synthetic clips for the built-in demo models and record what they answer.

    python examples/pick_examples.py            # writes examples/clips/*.mp4 and examples/questions.json

Clips come from the synthetic generator with seed 20,000 (neither the training seed nor the retention
table's held-out seed 10,000), rendered at 64 px, 4 fps, exactly as ``vidqa synthetic --size 64``
writes them. Every question of every clip is asked through the real path (``VideoQA`` on the decoded
mp4, 1 fps segment midpoints, greedy), on CPU in float32 like CI. ``questions.json`` keeps
each model's accuracy on all of them and marks a few correctly answered ones, over several
categories, as the README's and the tests' examples: a demo, chosen, and said to be chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidqa import synthetic
from vidqa.generate import GenerationConfig
from vidqa.pipeline import VideoQA
from vidqa.video import Sampling, load_frames

HERE = Path(__file__).parent
SEED, CLIPS, SIZE = 20_000, 24, 64


def main() -> None:
    out = HERE / "clips"
    out.mkdir(exist_ok=True)
    items = []
    for i in range(CLIPS):
        spec = synthetic.make_clip(SEED, i)
        path = out / f"shapes{i:02d}.mp4"
        synthetic.render(spec, path, size=SIZE, fps=4)
        for q in synthetic.questions(spec, SEED + i):
            items.append({"video": f"clips/{path.name}", "question": q["question"], "answer": q["answer"],
                          "category": synthetic.CATEGORIES[q["category_id"]]})
    report = {"seed": SEED, "clips": CLIPS, "size": SIZE, "models": {}, "examples": {}}
    for name in ("tiny-voco", "tiny-mini"):
        qa = VideoQA.from_pretrained(name, device="cpu", dtype="float32")
        caches = {}
        right = []
        for item in items:
            if item["video"] not in caches:
                caches[item["video"]] = qa.compress(load_frames(HERE / item["video"], Sampling(fps=1)))
            text = "".join(qa.answer(caches[item["video"]], item["question"], GenerationConfig(max_new_tokens=4)))
            ok = text.strip().split()[:1] == [item["answer"]]
            right.append(ok)
            item.setdefault("predicted", {})[name] = text.strip()
        report["models"][name] = {"accuracy": sum(right) / len(right), "questions": len(right)}
        picked, seen = [], set()
        for item, ok in zip(items, right):  # one correct answer per category, then stop at six
            if ok and item["category"] not in seen and len(picked) < 6:
                seen.add(item["category"])
                picked.append({k: item[k] for k in ("video", "question", "answer", "category")})
        report["examples"][name] = picked
    report["all_questions"] = items
    (HERE / "questions.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("models", "examples")}, indent=1))


if __name__ == "__main__":
    main()
