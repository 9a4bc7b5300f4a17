"""`vidqa train`: the options of a training run, the run (``vidqa.train``), and its progress on screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from vidqa.cli import common
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
                       "after its frames (each sees the frames and itself only). Real runs: a micro-batch's turns "
                       "share sequences of --max-length, each seeing only itself (less padding).")] = False,
    eval_every: Annotated[float, typer.Option(
        help="Seconds between held-out checks in the log (0: only at the end).")] = 0.0,
    device: Annotated[str, typer.Option(help="auto (this rank's GPU if there is one, else cpu), cpu, cuda or "
                                             "cuda:N.")] = "auto",
    base: Annotated[Optional[str], typer.Option(
        help="Real VoCo run: start from this LLaVA-1.5 checkpoint (or a VoCo one: video stage) or llava-hf "
             "checkpoint (hub id or folder); --data names instruction JSON files.", show_default=False)] = None,
    llm: Annotated[Optional[str], typer.Option(help="Real VoCo run from parts: a Llama-family LLM (with "
                                                    "--vision-tower and --projector).", show_default=False)] = None,
    vision_tower: Annotated[Optional[str], typer.Option(help="CLIP tower (hub id or folder) for --llm, or in place "
                                                             "of --base's.", show_default=False)] = None,
    projector: Annotated[Optional[str], typer.Option(help="LLaVA's pretrained projector (mm_projector.bin, read "
                                                          "as tensors only, or .safetensors) for --llm.",
                                                     show_default=False)] = None,
    image_folder: Annotated[Optional[str], typer.Option(help="Folder of the JSON records' 'image' paths.",
                                                        show_default=False)] = None,
    video_folder: Annotated[Optional[str], typer.Option(help="Folder of the JSON records' 'video' paths.",
                                                        show_default=False)] = None,
    max_frames: Annotated[int, typer.Option(help="Real runs: frames per video at most (vidqa's sampling).")] = 8,
    max_length: Annotated[int, typer.Option(help="Real runs: longer sequences are left out.")] = 2048,
    micro_batch_size: Annotated[int, typer.Option(help="Real runs: records per GPU per forward; --batch-size "
                                                       "(global) / (this x GPUs) steps of gradient accumulation.")] = 1,
    tune: Annotated[str, typer.Option(help="Real runs: the parts that train, of projector,llm,vision.")] = "projector,llm",
    freeze_llm: Annotated[bool, typer.Option("--freeze-llm", help="Real runs: do not train the LLM.")] = False,
    lora_r: Annotated[int, typer.Option(help="Real runs: LoRA rank on the LLM (0: full fine-tune); the export is "
                                             "merged.")] = 0,
    peak_tflops: Annotated[float, typer.Option(help="Per-GPU peak bf16 TFLOP/s, for the MFU in the log.")] = 800.0,
    save_every: Annotated[int, typer.Option(help="Steps between saved (resumable) states.")] = 200,
    log_every: Annotated[int, typer.Option(help="Real runs: steps between log lines.")] = 10,
    checkpointing: Annotated[Optional[str], typer.Option(
        help="Real runs: LLM layers that recompute their activations: full, none or every:N (default: full with "
             "--grad-checkpointing, else none).", show_default=False)] = None,
    compile_layers: Annotated[bool, typer.Option("--compile", help="Real runs: torch.compile each LLM decoder layer "
                                                            "(GPU; compiles on the first steps).")] = False,
    adam: Annotated[Literal["auto", "fused", "foreach"], typer.Option(
        help="Real runs: AdamW implementation (auto: fused on GPUs).")] = "auto",
    no_reshard: Annotated[bool, typer.Option("--no-reshard", help="Real runs, FSDP: keep each layer's gathered "
                                                                  "weights from forward to backward (more memory, "
                                                                  "less communication).")] = False,
    prefetch: Annotated[int, typer.Option(help="Real runs, FSDP: layers gathered ahead explicitly (0: FSDP's "
                                               "own order).")] = 0,
    attention: Annotated[Literal["sdpa", "flex"], typer.Option(
        help="Real runs: the VoCo mask as a dense SDPA mask, or a FlexAttention block mask (GPU: masked tiles "
             "skipped).")] = "sdpa",
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
    common.quiet_native_logs()
    if base or llm:
        return _train_real(locals())
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


def _train_real(o: dict) -> None:
    """`--base` / `--llm`: a VoCo model from LLaVA-1.5 on instruction data (``vidqa.train.scale``)."""
    import torch

    from vidqa.errors import VidqaError
    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.export import export_voco
    from vidqa.train.model import build_from_base
    from vidqa.train.stream import InstructionData, read_records

    if o["method"] != "voco":
        raise VidqaError("--base/--llm trains VoCo only (--method voco)", exit_code=2)
    if o["data"] == "synthetic":
        raise VidqaError("--base/--llm needs --data FILE.json[,FILE2.json] (LLaVA-style instruction data)", exit_code=2)
    if o["vision_from"]:
        raise VidqaError("--vision-from is for the demo models; a real run takes its tower from --base or "
                         "--vision-tower", exit_code=2)
    if o["tokens_per_frame"] < 1 or o["max_frames"] < 1 or o["micro_batch_size"] < 1 or o["lora_r"] < 0:
        raise VidqaError("--tokens-per-frame, --max-frames and --micro-batch-size must be >= 1", exit_code=2)
    if o["prefetch"] < 0:
        raise VidqaError("--prefetch must be >= 0", exit_code=2)
    if o["checkpointing"] is not None:
        scale.checkpoint_plan(o["checkpointing"], 1)  # a bad value refused before the base is loaded
    dev = scale.local_device(o["device"])
    rank = DistEnv.from_env().rank
    report = (lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True)) if rank == 0 else (lambda m: None)
    records = read_records(o["data"].split(","), o["image_folder"], o["video_folder"], o["on_bad"], report)
    torch.manual_seed(o["seed"])
    b = load_base(o["base"], llm=o["llm"], vision_tower=o["vision_tower"], projector=o["projector"])
    learner = build_from_base(b, o["tokens_per_frame"])
    tune = tuple(t.strip() for t in o["tune"].split(",") if t.strip())
    if o["freeze_llm"]:
        tune = tuple(t for t in tune if t != "llm")
    if o["freeze_vision"]:
        tune = tuple(t for t in tune if t != "vision")
    cfg = scale.ScaleConfig(steps=o["steps"], batch_size=o["batch_size"], micro_batch_size=o["micro_batch_size"],
                            lr=o["lr"], warmup=o["warmup"], tune=tune, lora_r=o["lora_r"],
                            grad_checkpointing=o["grad_checkpointing"], max_frames=o["max_frames"],
                            max_length=o["max_length"], workers=o["workers"], save_every=o["save_every"],
                            log_every=o["log_every"], seed=o["seed"], peak_tflops=o["peak_tflops"],
                            checkpointing=o["checkpointing"], compile="inductor" if o["compile_layers"] else "",
                            adam=o["adam"], reshard_after_forward=not o["no_reshard"], prefetch=o["prefetch"],
                            attention=o["attention"], pack=o["pack"])
    data = InstructionData(records, learner.vision.spec, o["max_frames"])
    out_dir = Path(o["out"])
    try:
        result = scale.fit(learner, data, cfg, out_dir, dev, log=lambda line: report(line) if rank == 0 else None)
        export_voco(learner, out_dir / "model")
    finally:
        scale.cleanup()
    if rank == 0:
        (out_dir / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
