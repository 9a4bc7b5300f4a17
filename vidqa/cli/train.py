"""`vidqa train`: the options of a training run, the run (``vidqa.train``), and its progress on screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from vidqa.cli.writers import err, live_progress
from vidqa.options import DistEnv

# what vidqa.train.train() logs every cfg.log_every steps
STEP_LINE = re.compile(r"step (\d+)/(\d+) loss ([0-9.]+) acc ([0-9.]+)(?: held-out ([0-9.]+))? lr \S+ (\d+) samples/s")


class _StepBar:
    """Renders train()'s log lines: step lines move a transient rich bar (steps, loss, samples/s, ETA);
    other lines (resumed, stopped) are printed above it."""

    def __init__(self, steps: int, timed: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}")]
        if not timed:  # with a time or sample budget the step count says little about the end
            columns.append(TimeRemainingColumn())
        self.progress = Progress(*columns, console=err, transient=True)
        self.task = self.progress.add_task("train", total=steps, stats="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, line: str) -> None:
        m = STEP_LINE.search(line)
        if not m:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        step, _, loss, acc, held_out, rate = m.groups()
        stats = f"loss {float(loss):.4f}  acc {float(acc):.3f}" + (f"  held-out {held_out}" if held_out else "")
        self.progress.update(self.task, completed=int(step), stats=f"{stats}  {rate} samples/s")


def train(
    out: Annotated[str, typer.Option(help="Run directory: train_state/ (resumable; safetensors + JSON) and model/.",
                                     show_default=False)],
    method: Annotated[Literal["voco", "mini", "full", "pool"], typer.Option(help="What to train (full and pool are the retention table's reference "
                                             "rows).")] = "voco",
    data: Annotated[str, typer.Option(help="'synthetic' or a LLaVA-style JSON file.")] = "synthetic",
    media_root: Annotated[Optional[str], typer.Option(
        help="Folder the JSON data's video/image paths are relative to (default: the JSON file's folder).",
        show_default=False)] = None,
    on_bad: Annotated[Literal["skip", "refuse"], typer.Option(help="JSON data: skip unusable samples (listed on stderr) or refuse "
                                             "the data.")] = "skip",
    tokens_per_frame: Annotated[int, typer.Option(help="Compressed tokens per frame (voco).")] = 1,
    steps: Annotated[int, typer.Option(help="Optimiser steps (the schedule's length).")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Questions per step (clips per step with --pack).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup, then cosine decay).")] = 1e-3,
    clips: Annotated[int, typer.Option(help="Synthetic training clips.")] = 4000,
    eval_clips: Annotated[int, typer.Option(help="Synthetic held-out clips, scored at the end.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the weights, the data and the batches.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes rendering the synthetic clips.")] = 1,
    freeze_vision: Annotated[bool, typer.Option("--freeze-vision", help="Do not train the vision tower.")] = False,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing",
                                                     help="Recompute activations (less memory, slower).")] = False,
    minutes: Annotated[Optional[float], typer.Option(
        help="Time budget: the learning-rate schedule ends after this long, or at --steps if sooner.",
        show_default=False)] = None,
    samples: Annotated[Optional[int], typer.Option(
        help="Budget in questions seen: the schedule ends there (equal data across compared runs).",
        show_default=False)] = None,
    vision_from: Annotated[Optional[str], typer.Option(
        help="Start the vision tower from another run (its --out folder or its train_state; safetensors only, pickles "
             "are refused) (with --freeze-vision: a fixed, pretrained "
             "tower, as VoCo-LLaMA's comparisons use a frozen CLIP).", show_default=False)] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        help="Hard stop after this long (steps done are reported).", show_default=False)] = None,
    warmup: Annotated[int, typer.Option(help="Warmup steps.")] = 100,
    pack: Annotated[bool, typer.Option(
        "--pack", help="Synthetic data: --batch-size counts clips, and all of a clip's questions share one sequence "
                       "after its frames (each sees the frames and itself only).")] = False,
    eval_every: Annotated[float, typer.Option(
        help="Seconds between held-out checks in the log (0: only at the end).")] = 0.0,
    device: Annotated[str, typer.Option(help="auto (this rank's GPU if there is one, else cpu), cpu, cuda or "
                                             "cuda:N.")] = "auto",
):
    """Train VoCo or LLaVA-Mini compression (or a small demo model from scratch).

    Runs the same compression code as inference. Data: `--data synthetic` or LLaVA-style JSON. Resumable
    (`--out DIR`), bf16 on GPU, several GPUs with `torchrun --nproc-per-node N -m vidqa train`. Prints a JSON
    summary at the end; writes OUT/result.json and (voco, mini, pool) the checkpoint OUT/model.
    """
    import torch  # heavy: imported when the command runs, not for `vidqa --help`

    from vidqa import synthetic
    from vidqa import train as T
    from vidqa.checkpoint import quiet_transformers

    quiet_transformers()  # no transformers progress bars (saving shards) or warnings among ours
    dist = DistEnv.from_env()
    dev = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() and device in ("auto", "cuda") else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.manual_seed(seed)
    out_dir = Path(out)
    cfg = T.TrainConfig(variant=method, tokens_per_frame=tokens_per_frame, steps=steps, batch_size=batch_size, lr=lr,
                        freeze_vision=freeze_vision, grad_checkpointing=grad_checkpointing, seed=seed, minutes=minutes,
                        max_minutes=max_minutes, warmup=warmup, eval_every=eval_every, pack=pack, samples=samples)
    if data == "synthetic":
        train_data = T.SyntheticData(clips, seed=seed + 1, size=cfg.tiny.image_size, workers=workers)
        eval_data = T.SyntheticData(eval_clips, seed=10_000 + seed, size=cfg.tiny.image_size, workers=workers)
    else:
        train_data = T.JsonData(data, media_root, on_bad=on_bad,
                                report=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True))
        eval_data = None
    family = "mini" if method == "mini" else "voco"
    tokenizer = T.make_word_tokenizer(out_dir / "tokenizer", train_data.texts() + list(synthetic.ANSWERS), family)
    learner = T.build_tiny(method, tokenizer, cfg.tiny, tokens_per_frame)
    if vision_from:
        T.load_vision_from(learner, Path(vision_from))
    if dist.rank == 0 and live_progress():
        with _StepBar(cfg.steps, timed=bool(minutes or samples)) as bar:
            result = T.train(learner, train_data, cfg, out_dir, dev, log=bar, eval_data=eval_data)
    else:  # a log file or a pipe: the log lines as they come
        result = T.train(learner, train_data, cfg, out_dir, dev, log=lambda line: print(line, flush=True),
                         eval_data=eval_data)
    if dist.rank == 0:
        if method in ("voco", "mini", "pool"):  # the rows vidqa can answer with (full is a reference only)
            T.export(learner.float(), out_dir / "model", cfg.tiny, note=f"vidqa demo model ({method}), trained on "
                     "synthetic clips only; random-init, not a general video model")
        (out_dir / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
