"""Instruction data for real runs, streamed: LLaVA image JSON, video JSON, and mixtures of both.

Records: ``{"image": path}`` (relative to ``--image-folder``) or ``{"video": path}`` (relative to
``--video-folder``), and ``conversations`` ``[{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt",
"value": "A"}, ...]``. Only the JSON is read up front (structure checked, bad records reported by index);
pixels are decoded by ``DataLoader`` worker processes as the run needs them (vidqa's own decoder and
sampling, at most ``max_frames`` frames per video, segment midpoints), padded square and resized to the
tower's size there, so that the GPUs get ready uint8 frames. A file that fails to decode is reported by
index and skipped (``on_bad="skip"``) or stops the run (``"refuse"``).

``StepSampler`` makes the order independent of the number of processes: step ``s`` takes global
positions ``[s*G, (s+1)*G)`` of a seeded permutation per epoch; rank ``r`` gets every ``world``-th of them,
so 1 or N processes see the same samples per step, and a resumed run continues where it stopped.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vidqa.errors import VidqaError
from vidqa.train.data import IMAGE, DataError
from vidqa.vision import Preprocess


@dataclass
class Record:
    media: Path
    kind: str  # "image" | "video"
    turns: list[tuple[str, str]]
    where: str  # "file.json record 12" for messages


def read_records(files: list[str | Path], image_folder: str | Path | None, video_folder: str | Path | None,
                 on_bad: str = "skip", report: Callable[[str], None] = print) -> list[Record]:
    """Every usable record of the JSON files (a mixture when several), media paths resolved."""
    out: list[Record] = []
    for file in files:
        file = Path(file)
        try:
            records = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read training data {file}: {e}")
        if not isinstance(records, list):
            raise DataError(f"{file}: expected a JSON list of conversations")
        for i, rec in enumerate(records):
            try:
                out.append(_record(rec, file, i, image_folder, video_folder))
            except DataError as e:
                if on_bad == "refuse":
                    raise DataError(f"{file}: record {i}: {e} (--on-bad skip to leave such records out)")
                report(f"skipping {file.name} record {i}: {e}")
    if not out:
        raise DataError("no usable training records in " + ", ".join(str(f) for f in files))
    return out


def _record(rec, file: Path, i: int, image_folder, video_folder) -> Record:
    if not isinstance(rec, dict):
        raise DataError("not a JSON object")
    kind = "video" if rec.get("video") else "image" if rec.get("image") else None
    turns = rec.get("conversations")
    if kind is None or not isinstance(rec[kind], str) or not isinstance(turns, list) or len(turns) < 2:
        raise DataError("needs an image or video path and at least one human/gpt pair")
    folder = video_folder if kind == "video" else image_folder
    root = Path(folder) if folder else file.parent
    pairs = []
    for h, g in zip(turns[::2], turns[1::2]):
        if not isinstance(h, dict) or not isinstance(g, dict) or h.get("from") != "human" or g.get("from") != "gpt":
            raise DataError("a turn is malformed (human, then gpt)")
        q = str(h.get("value", "")).replace(IMAGE, "").strip()
        a = str(g.get("value", "")).strip()
        if not q or not a:
            raise DataError("a question or an answer is empty")
        pairs.append((q, a))
    return Record(root / rec[kind], kind, pairs, f"{file.name} record {i}")


def fit_frames(frames: np.ndarray, spec: Preprocess) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` to uint8 ``[T, S, S, 3]`` as ``spec`` fits a frame (pad with the mean colour,
    squash, or crop), so that a batch stacks and the device only normalises."""
    x = torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    T, _, h, w = x.shape
    S = spec.size
    if spec.aspect == "pad" and h != w:
        side = max(h, w)
        fill = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
        canvas = fill.expand(T, 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top:top + h, left:left + w] = x
        x = canvas
    elif spec.aspect == "crop":
        scale = S / min(h, w)
        nh, nw = max(S, round(h * scale)), max(S, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - S) // 2, (nw - S) // 2
        x = x[:, :, top:top + S, left:left + S]
    if x.shape[-2:] != (S, S):
        x = F.interpolate(x, size=(S, S), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class InstructionData(torch.utils.data.Dataset):
    """Records decoded on demand (in DataLoader workers): ``{"index", "frames" uint8 [T, S, S, 3], "turns"}``
    or ``{"index", "bad": message}``. ``frames_fn`` replaces decoding (the benchmark's synthetic frames)."""

    def __init__(self, records: list[Record], spec: Preprocess, max_frames: int = 8,
                 frames_fn: Callable[[Record], np.ndarray] | None = None):
        self.records, self.spec, self.max_frames, self.frames_fn = records, spec, max_frames, frames_fn

    def __len__(self) -> int:
        return len(self.records)

    def texts(self) -> list[str]:
        return [t for r in self.records for q, a in r.turns for t in (q, a)]

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        try:
            if self.frames_fn is not None:
                frames = self.frames_fn(rec)
            else:
                from vidqa.video import Sampling, load_frames

                sampling = Sampling(num_frames=1 if rec.kind == "image" else self.max_frames)
                with warnings.catch_warnings():  # a decoder fallback is not the user's concern mid-run
                    warnings.simplefilter("ignore")
                    frames = load_frames(rec.media, sampling).pixels
            return {"index": i, "frames": fit_frames(frames[: self.max_frames], self.spec), "turns": rec.turns}
        except VidqaError as e:
            return {"index": i, "bad": f"{rec.where}: {e}"}
        except Exception as e:  # a decoder error of a broken file: reported, the run goes on
            return {"index": i, "bad": f"{rec.where}: cannot decode {rec.media.name}: {type(e).__name__}"}


class StepSampler(torch.utils.data.Sampler):
    """Micro-batches of this rank, step after step from ``start_step`` (see the module docstring)."""

    def __init__(self, n: int, global_batch: int, micro: int, rank: int, world: int, seed: int, start_step: int = 0,
                 steps: int | None = None):
        if global_batch % (micro * world):
            raise VidqaError(f"--batch-size {global_batch} is not a multiple of --micro-batch-size x processes "
                             f"({micro} x {world})", exit_code=2)
        self.n, self.G, self.micro, self.rank, self.world = n, global_batch, micro, rank, world
        self.seed, self.start, self.steps = seed, start_step, steps

    @property
    def accumulation(self) -> int:
        return self.G // (self.micro * self.world)

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def step_indices(self, step: int) -> list[int]:
        pos = np.arange(step * self.G, (step + 1) * self.G)[self.rank::self.world]
        cache: dict[int, np.ndarray] = {}
        out = []
        for p in pos:
            epoch = int(p // self.n)
            if epoch not in cache:
                cache[epoch] = self._perm(epoch)
            out.append(int(cache[epoch][p % self.n]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while self.steps is None or step < self.steps:
            mine = self.step_indices(step)
            for k in range(0, len(mine), self.micro):
                yield mine[k:k + self.micro]
            step += 1

    def __len__(self) -> int:
        return max(0, (self.steps or 0) - self.start) * self.accumulation


def collate(items: list[dict]) -> list[dict]:
    return items


def loader(data: InstructionData, sampler: StepSampler, workers: int) -> torch.utils.data.DataLoader:
    """Worker processes decode ahead of the GPUs (``prefetch_factor`` micro-batches each)."""
    kw = dict(num_workers=workers, persistent_workers=workers > 0)
    if workers > 0:
        kw["prefetch_factor"] = 4
        kw["multiprocessing_context"] = "spawn" if torch.cuda.is_available() else None
    return torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate, **kw)
