"""What several commands share: loading the model behind a spinner, FFmpeg kept quiet, and the one torchrun
relaunch."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import typer

from vidqa.cli.params import check_gpus
from vidqa.cli.writers import err
from vidqa.options import ComputeOptions, DistEnv, ModelOptions, debug

if TYPE_CHECKING:
    from vidqa.pipeline import VideoQA


def load(model: ModelOptions, compute: ComputeOptions, quiet: bool = False) -> "VideoQA":
    """``library.load_model`` with a "loading model" spinner on stderr (none when ``quiet``)."""
    from vidqa import library  # torch and transformers: only once a command really runs (start-up time)

    if quiet or not err.is_terminal:
        return library.load_model(model, compute)
    with err.status("loading model", spinner="dots"):
        return library.load_model(model, compute)


def quiet_native_logs() -> None:
    """No FFmpeg log line on stderr (a damaged file's "partial file", "Read error" ...): vidqa reports what
    matters itself, as one ``note:`` per problem. PyAV's and decord's bundled FFmpeg each have their own
    level. ``VIDQA_DEBUG=1`` leaves them as they are. Called by each command that may decode (its first line:
    it imports the decoders, which `vidqa --help` does without)."""
    if debug():
        return
    import av.logging  # PyAV passes FFmpeg's log to Python logging only at a level it is given

    av.logging.set_level(None)
    try:
        import decord
    except ImportError:  # decord is optional (no wheel for every platform)
        return
    decord.logging.set_level(decord.logging.QUIET)


def without_option(args: list[str], name: str) -> list[str]:
    """``args`` less ``name VALUE`` and ``name=VALUE``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def relaunch_on_gpus(gpus: int, dist: DistEnv) -> None:
    """With ``--gpus N`` (N > 1) outside torchrun: run this same command under torchrun on N processes
    and exit with its code. Inside a torchrun launch, or with one GPU, return and run here."""
    if gpus <= 1 or dist.launched:
        return
    check_gpus(gpus)  # one line now, not torchrun's traceback from every process
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "vidqa",
           *without_option(sys.argv[1:], "--gpus")]
    raise typer.Exit(subprocess.call(cmd))
