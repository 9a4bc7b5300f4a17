"""How often quantised demo models answer as their float32 selves, on synthetic clips they never saw.

    python benchmarks/quant_agreement.py --out agreement.json                 # seed 9, 40 videos, size 64
    python benchmarks/quant_agreement.py --videos 4 --models tiny-voco        # a quick look

For each built-in demo model and each ``--quantize`` mode that runs on this device, every question of
``vidqa synthetic --seed 9 --videos 40 --size 64`` (a seed the demo models were not trained on) is
answered greedily by the float32 model and by the quantised one from the same frames; the agreement is
the fraction of identical answers (accuracy against the gold answer is reported too). Also an fp8
stored cache (``--cache-dtype fp8``): the float32 model answering from its own cache after an fp8
round trip. ``tests/test_quant.py`` runs it on 3 of the clips and asserts int8 >= 95%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from vidqa import quant
from vidqa.generate import GenerationConfig
from vidqa.options import ComputeOptions
from vidqa.pipeline import VideoQA
from vidqa.synthetic import generate
from vidqa.video import Sampling, load_frames

MODELS = ("tiny-voco", "tiny-mini")


def cpu_modes() -> list[str]:
    """The quantisation modes that run on the CPU (fp8 needs a GPU of compute capability 8.9+)."""
    modes = []
    for mode in ("int8", "int4"):
        try:
            quant.check(mode, torch.device("cpu"), torch.float32)
            modes.append(mode)
        except quant.QuantizeError:
            pass
    return modes


def answer(qa: VideoQA, cache, question: str, max_new_tokens: int) -> str:
    return "".join(qa.answer(cache, question, GenerationConfig(max_new_tokens=max_new_tokens))).strip()


def agreement(data_dir: Path, models=MODELS, modes=None, max_new_tokens: int = 4) -> dict:
    """``{model: {mode: {"agree": rate, "accuracy": rate, "questions": n}}}``; mode ``none`` is float32
    itself (its accuracy) and ``cache-fp8`` the float32 model answering from an fp8 round-tripped cache."""
    modes = cpu_modes() if modes is None else list(modes)
    qa_items = json.loads((data_dir / "test_qa.json").read_text())
    by_video: dict[str, list[dict]] = {}
    for item in qa_items:
        by_video.setdefault(item["video_id"], []).append(item)
    out = {}
    for name in models:
        qas = {"none": VideoQA.from_pretrained(name, compute=ComputeOptions(device="cpu", dtype="fp32"))}
        for mode in modes:
            qas[mode] = VideoQA.from_pretrained(name, compute=ComputeOptions(device="cpu", dtype="fp32", quantize=mode))
        answers: dict[str, list[str]] = {m: [] for m in [*qas, "cache-fp8"]}
        gold = []
        for vid, items in sorted(by_video.items()):
            frames = load_frames(data_dir / "videos" / f"{vid}.mp4", Sampling(fps=1))
            for mode, qa in qas.items():
                cache = qa.compress(frames)
                caches = [(mode, cache)]
                if mode == "none":
                    caches.append(("cache-fp8", quant.decode_cache(quant.encode_cache(cache))))
                for label, c in caches:
                    answers[label].extend(answer(qa, c, it["question"], max_new_tokens) for it in items)
            gold.extend(it["answer"] for it in items)
        base = answers["none"]
        out[name] = {m: {"agree": sum(a == b for a, b in zip(ans, base)) / len(base),
                         "accuracy": sum(a == g for a, g in zip(ans, gold)) / len(gold), "questions": len(gold)}
                     for m, ans in answers.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=None, help="default: every mode that runs on the CPU")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, args.videos, seed=args.seed, size=args.size, workers=1)
        result = agreement(Path(tmp), args.models, args.modes)
    report = {"seed": args.seed, "videos": args.videos, "size": args.size, "device": "cpu", "dtype": "float32",
              "seconds": round(time.perf_counter() - t0, 1), "models": result}
    for model, modes in result.items():
        for mode, r in modes.items():
            print(f"{model:10s} {mode:9s} agree with fp32 {r['agree']:6.1%}  accuracy {r['accuracy']:6.1%}  "
                  f"({r['questions']} questions)")
    print(f"{report['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
