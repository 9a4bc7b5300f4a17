"""Every option that more than one command takes, declared once, and the builders of the settings they make.

A command lists the options it takes with these types (``model: params.Model = None``) and hands
them to a builder (``params.model_options(...)``), which returns the dataclass of ``vidqa.options``
(or ``vidqa.video.Sampling``) that travels whole into the library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vidqa.errors import UsageError
from vidqa.options import (MODEL_ENV, CacheOptions, ComputeOptions, ModelOptions, check_generation,
                           check_question)

if TYPE_CHECKING:  # vidqa.video pulls in numpy and the decoders; `vidqa --help` does without them
    from vidqa.generate import GenerationConfig
    from vidqa.video import Sampling

MAX_SAMPLED_FRAMES = 100_000  # --num-frames / --max-frames: hours of video at 1 fps; the context fits far fewer

# ---- the model ---------------------------------------------------------------------------------
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar=MODEL_ENV, show_default=False,
    help="Checkpoint: a local directory, a hub id (HF cache; HF_HUB_OFFLINE=1 works offline), or a built-in "
         "demo model for synthetic shape clips: tiny-voco, tiny-mini.")]
Method = Annotated[Optional[str], typer.Option(help="voco, mini or pool. Default: what the checkpoint's config says.",
                                               show_default=False)]
VisionTower = Annotated[Optional[str], typer.Option(help="Override the config's mm_vision_tower (dir or hub id).",
                                                    show_default=False)]
TokensPerFrame = Annotated[Optional[int], typer.Option(show_default=False,
                                                       help="VoCo tokens per frame. Default: config voco_num, or 2.")]

# ---- frames ------------------------------------------------------------------------------------
Fps = Annotated[float, typer.Option(help="Frames per second to sample (segment midpoints).")]
NumFrames = Annotated[Optional[int], typer.Option(show_default=False,
                                                  help="Sample exactly this many frames, uniformly (overrides --fps).")]
MaxFrames = Annotated[Optional[int], typer.Option(show_default=False,
                                                  help="Cap on frames; more are thinned out uniformly.")]
Start = Annotated[Optional[float], typer.Option(show_default=False, help="Start of the window, in seconds.")]
End = Annotated[Optional[float], typer.Option(show_default=False, help="End of the window, in seconds.")]
Decoder = Annotated[str, typer.Option(help="auto (decord, PyAV on failure), decord or av.")]
SamplingRule = Annotated[Optional[str], typer.Option(
    "--sampling", show_default=False,
    help="Frame-sampling rule: midpoint (segment midpoints in time) or seq (LLaVA-Mini's get_seq_frames). "
         "Default: the method's official evaluation (seq for mini, midpoint otherwise).")]
PreprocessMode = Annotated[Optional[str], typer.Option(
    "--preprocess", show_default=False,
    help="official (default: each method's official pixel path, exact) or fast (torch antialiased bicubic).")]

# ---- compute -----------------------------------------------------------------------------------
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, show_default=False,
                                                  help="Frames compressed per batch (16 on GPU, 4 on CPU).")]
Quantize = Annotated[str, typer.Option(
    help="none, or the LLM's linear layers in fewer bits (torchao; pip install 'vidqa[quant]'): fp8 (GPUs with "
         "compute capability 8.9+: faster compression and prefill), int8 or int4 (weight-only: faster decoding, "
         "less memory; CPU and GPU).")]
CacheDtype = Annotated[str, typer.Option(
    help="auto (the model's dtype) or fp8: store frame caches in 8 bits with per-row scales (half of bf16).")]
Gpus = Annotated[int, typer.Option(min=1, help="Run on this many GPUs (launches torchrun).")]

# ---- the cache store ---------------------------------------------------------------------------
CacheDir = Annotated[Optional[str], typer.Option(
    show_default=False, help="Cache store (default: $VIDQA_CACHE_DIR, else $XDG_CACHE_HOME/vidqa or ~/.cache/vidqa).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache store.")]

# ---- answers -----------------------------------------------------------------------------------
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")]
Temperature = Annotated[float, typer.Option(help="0 decodes greedily; above 0 (0.001 to 100) samples.")]
TopP = Annotated[float, typer.Option(help="Nucleus sampling mass, above 0 and at most 1 (with --temperature > 0).")]
Seed = Annotated[Optional[int], typer.Option(show_default=False, help="Seed for sampling, for repeatable answers.")]


def json_flag(what: str):
    """``--json``, with what it prints instead."""
    return Annotated[bool, typer.Option("--json", help=what)]


# ---- builders ----------------------------------------------------------------------------------

def model_options(model: str | None, method: str | None, vision_tower: str | None,
                  tokens_per_frame: int | None) -> ModelOptions:
    return ModelOptions(model=model, method=method, vision_tower=vision_tower, tokens_per_frame=tokens_per_frame)


def compute_options(device: str, dtype: str, batch_size: int | None, quantize: str | None = None,
                    cache_dtype: str | None = None) -> ComputeOptions:
    compute = ComputeOptions.from_env(device=device, dtype=dtype, batch_size=batch_size, quantize=quantize,
                                      cache_dtype=cache_dtype)
    check_device(compute.device)
    return compute


def check_device(device: str) -> None:
    """A GPU that was asked for exists (the option's form is checked by ``ComputeOptions``)."""
    if not device.startswith("cuda"):
        return
    import torch  # only when a GPU is named: `vidqa --help` does without torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= have:
        raise UsageError(f"--device {device} was asked for, but torch sees "
                         f"{'no CUDA GPU' if not have else f'{have} CUDA GPU(s) (cuda:0 to cuda:{have - 1})'}")


def check_gpus(gpus: int) -> None:
    """``--gpus N`` needs N CUDA GPUs (checked before torchrun is launched)."""
    if gpus <= 1:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > have:
        raise UsageError(f"--gpus {gpus} was asked for, but torch sees {have or 'no'} CUDA GPU{'s' if have != 1 else ''}")


def generation(max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> "GenerationConfig":
    from vidqa.generate import GenerationConfig

    check_generation(max_new_tokens, temperature, top_p, seed)
    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def question(text: str) -> str:
    """The question, stripped; an empty one or one that is not valid UTF-8 is refused."""
    return check_question(text)


def cache_options(cache_dir: str | None, no_cache: bool = False) -> CacheOptions:
    return CacheOptions(cache_dir=cache_dir, enabled=not no_cache)


def sampling(fps: float, num_frames: int | None, max_frames: int | None, start: float | None = None,
             end: float | None = None, rule: str | None = None, preprocess: str | None = None) -> "Sampling":
    from vidqa.video import Sampling

    for name, value in (("--num-frames", num_frames), ("--max-frames", max_frames)):
        if value is not None and not 1 <= value <= MAX_SAMPLED_FRAMES:
            raise UsageError(f"{name} must be from 1 to {MAX_SAMPLED_FRAMES}, not {value}")
    return Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames, start=start, end=end, rule=rule,
                    preprocess=preprocess)
