"""Synthetic video QA: short clips of coloured shapes, with MSRVTT-QA style annotations.

    vidqa synthetic OUT_DIR --videos 200 --seed 0                  # writes and prints a summary

    spec = make_clip(seed=0, index=42)         # the timeline, fully determined by (seed, index)
    frames = render_frames(spec, size=112, fps=4)   # uint8 [32, 112, 112, 3]
    render(spec, "synth00042.mp4")             # the same frames as an mp4 (PyAV, h264 or mpeg4)
    qa = questions(spec, rng=np.random.default_rng(0))
    summary = generate("out", n_videos=100, seed=0)

The clips train and evaluate tiny demo models (a small CLIP-style tower at 64-112 px, a small LLM
with its own tokenizer), so the world is small on purpose.

The world
---------
A clip lasts ``seconds`` (default 8) on a plain dark grey background. One to three shapes, each of a
different kind (``SHAPES``), appear, may move, may turn another colour, and may disappear. No two
colours repeat within a clip, counting the colours shapes turn into, so a colour word or a shape
word always names exactly one object. Shapes never overlap and never leave the frame. Positions are
fractions of the frame, so one spec renders at any size and frame rate.

Timeline rules (they make every question answerable from frames sampled at 1 fps, whatever the
sampling phase, e.g. the segment midpoints ``t = 0.5, 1.5, ...`` that ``vidqa.video`` uses):

* Events are ``appear``, ``turn`` (change colour) and ``disappear``. They happen on whole seconds
  and no two events of a clip share a second, so events are at least 1 s apart and every state
  between two events lasts at least 1 s: any 1 fps sampling sees it.
* A shape appears at ``0 <= t <= seconds - 3``, turns at least 1 s after appearing and at least 1 s
  before disappearing, and disappears at ``t <= seconds - 1`` (so its absence is seen).
* A ``move`` is a constant-velocity slide left, right, up or down by 30-55 % of the frame, between
  whole seconds, lasting 2 or 3 s; it starts at least 1 s after its shape appears and stops at
  least 1 s before the shape disappears or the clip ends, so the shape is seen at rest before and
  after. Moves may overlap other events (they are not used as reference points in questions).
* A shape is visible on ``[appear, disappear)``; a turn at ``t`` shows the new colour from ``t`` on.
  A frame ``k`` shows the world at time ``k / fps``.

Vocabulary
----------
colours ``red green blue yellow white purple`` (far apart in hue or luma, so they survive yuv420p
and h264 at 64 px); shapes ``circle square triangle cross``; directions ``left right up down``;
counts as words ``zero`` to ``five`` (MSRVTT-QA's answers are lemmatised words, and a small
tokenizer then sees one word type); ``yes no``. Every answer is one lowercase word from these
lists (``ANSWERS``, 22 words).

Question categories (``category_id``)
-------------------------------------
==  ===========  =====================================================================  =========
id  name         templates                                                              answers
==  ===========  =====================================================================  =========
0   colour       what colour is the <shape>?  (only shapes that never change colour)    colour
1   shape        what shape is the <colour> one?                                        shape
2   count        how many shapes appear / move / disappear / change colour?             count
                 how many colours appear?  how many shapes are on screen at the end?
                 how many other shapes are on screen when the <ref> appears?
3   direction    which way does the <ref> move?                                         direction
4   order        what shape appears before / after the <ref>?  (exactly one does)       shape
                 what shape appears first / last?   what shape disappears first / last?
                 what colour is the shape that appears first / last?                    colour
5   state        what colour is the <shape> when the <ref> appears / disappears?        colour
                 what colour does the <shape> turn?   what colour is the <shape> at first?
6   existence    does a <colour> <shape> appear?                                        yes / no
7   event        what shape moves / disappears / changes colour?  (exactly one does)    shape
==  ===========  =====================================================================  =========

``<ref>`` is ``<colour> <shape>`` for a shape that keeps its colour and ``<shape>`` otherwise.
Categories 2-5 and 7 need the video's time axis (what changed, in which order, at which moment).
Each clip gets at most one question per category (``per_category``); within a category the answer
is drawn from the answers that clip can support (uniformly, but for ``ANSWER_WEIGHTS``), then a
question with that answer, which keeps the answer distribution flat. :func:`generate` reports the
majority-answer baseline, per category too, and what the question text alone gives away. On 200
clips (seed 0): always answering the most common answer scores about 10 %, the most common answer
of each category about 29 %; existence is yes/no at about 50/50, every other category is under
about 30 %.

Files
-----
:func:`generate` writes ``OUT_DIR/videos/synthNNNNN.mp4`` (``NNNNN`` = the clip's index),
``OUT_DIR/{split}_qa.json`` in the MSRVTT-QA ``test_qa.json`` format (a JSON list of
``{"question", "answer", "id", "video_id", "category_id"}``, ``video_id`` the file stem),
``OUT_DIR/{split}_clips.json`` (every spec, to re-render or inspect) and
``OUT_DIR/{split}_summary.json``. A clip depends only on ``(seed, index)``, not on ``split``: give
each split its own seed (or ``first_index``) so that train and test clips differ.
"""

# Over 500 lines: one generator end to end (timeline, placement, rendering, questions, the set and its summary);
# its parts share the clip specification and are only ever used together.
from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vidqa.errors import VidqaError

__all__ = [
    "ANSWERS",
    "BACKGROUND",
    "CATEGORIES",
    "COLOURS",
    "COUNTS",
    "DIRECTIONS",
    "Event",
    "PALETTE",
    "SHAPES",
    "ClipSpec",
    "ShapeTrack",
    "SyntheticError",
    "generate",
    "make_clip",
    "questions",
    "render",
    "render_frames",
    "summarize",
]

# ---------------------------------------------------------------------------------------------
# Vocabulary

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 240),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "purple": (170, 60, 210),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (40, 40, 40)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
COUNTS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
ANSWERS: tuple[str, ...] = COLOURS + SHAPES + DIRECTIONS + COUNTS + ("yes", "no")
#: category_id -> name; the table in the module docstring lists the templates.
CATEGORIES: dict[int, str] = {
    0: "colour",
    1: "shape",
    2: "count",
    3: "direction",
    4: "order",
    5: "state",
    6: "existence",
    7: "event",
}
_CAT = {name: cid for cid, name in CATEGORIES.items()}
_UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image y grows downwards

SHAPE_SIZE = 0.22  # side of a shape's bounding box, as a fraction of the frame
_MARGIN = 0.03  # kept free between a shape and the frame edge
_GAP = 0.05  # kept free between two shapes' boxes
_MOVE_DISTANCE = (0.30, 0.55)
_MOVE_SECONDS = (2, 3)
#: Relative weight of an answer when :func:`questions` picks one (default 1): the count questions
#: that can answer "three" are rarer, so "three" is favoured when a clip offers it.
ANSWER_WEIGHTS: dict[int, dict[str, float]] = {2: {"two": 1.2, "three": 1.8, "four": 3.0, "five": 5.0}}
MIN_SECONDS = 4


class SyntheticError(VidqaError, ValueError):
    """Bad arguments to the synthetic generator (one line, as the CLI prints it)."""


# ---------------------------------------------------------------------------------------------
# Clip specs


@dataclass(frozen=True)
class ShapeTrack:
    """One shape's life in a clip. Times are whole seconds; positions fractions of the frame."""

    shape: str
    colour: str  # the colour it appears in
    x: float  # centre when it appears
    y: float
    appear: int
    disappear: int | None = None  # None: visible to the end of the clip
    turn: int | None = None  # when it changes colour ...
    new_colour: str | None = None  # ... to this one
    move_start: int | None = None
    move_end: int | None = None
    direction: str | None = None
    distance: float = 0.0  # fraction of the frame covered by the move

    @property
    def moves(self) -> bool:
        return self.direction is not None

    @property
    def turns(self) -> bool:
        return self.turn is not None

    @property
    def disappears(self) -> bool:
        return self.disappear is not None

    @property
    def colours(self) -> tuple[str, ...]:
        """Every colour it shows, in order."""
        return (self.colour, self.new_colour) if self.new_colour else (self.colour,)

    def end(self, seconds: float) -> float:
        return self.disappear if self.disappear is not None else seconds

    def visible(self, t: float) -> bool:
        return self.appear <= t < (self.disappear if self.disappear is not None else math.inf)

    def colour_at(self, t: float) -> str:
        return self.new_colour if self.turn is not None and t >= self.turn else self.colour

    def position_at(self, t: float) -> tuple[float, float]:
        if not self.moves:
            return self.x, self.y
        assert self.move_start is not None and self.move_end is not None and self.direction
        frac = min(max((t - self.move_start) / (self.move_end - self.move_start), 0.0), 1.0)
        ux, uy = _UNIT[self.direction]
        return self.x + ux * self.distance * frac, self.y + uy * self.distance * frac

    @property
    def final_position(self) -> tuple[float, float]:
        return self.position_at(math.inf)


@dataclass(frozen=True)
class Event:
    time: int
    kind: str  # appear | turn | disappear | move (start of a move) | stop (end of a move)
    shape: str
    detail: str = ""  # the new colour of a turn, the direction of a move


@dataclass(frozen=True)
class ClipSpec:
    """A clip's timeline: fully determined by ``(seed, index)`` and the options of :func:`make_clip`."""

    seed: int
    index: int
    seconds: int
    shapes: tuple[ShapeTrack, ...] = field(default_factory=tuple)  # in order of appearance

    @property
    def video_id(self) -> str:
        return f"synth{self.index:05d}"

    def track(self, shape: str) -> ShapeTrack:
        for track in self.shapes:
            if track.shape == shape:
                return track
        raise KeyError(shape)

    @property
    def events(self) -> list[Event]:
        """Every event, by time (the ``stop`` of a move is listed too, though not an event proper)."""
        out: list[Event] = []
        for s in self.shapes:
            out.append(Event(s.appear, "appear", s.shape, s.colour))
            if s.turn is not None:
                out.append(Event(s.turn, "turn", s.shape, s.new_colour or ""))
            if s.disappear is not None:
                out.append(Event(s.disappear, "disappear", s.shape))
            if s.moves:
                out.append(Event(s.move_start, "move", s.shape, s.direction or ""))  # type: ignore[arg-type]
                out.append(Event(s.move_end, "stop", s.shape, s.direction or ""))  # type: ignore[arg-type]
        order = {"appear": 0, "move": 1, "stop": 2, "turn": 3, "disappear": 4}
        return sorted(out, key=lambda e: (e.time, order[e.kind], e.shape))

    def state(self, t: float) -> list[tuple[str, str, float, float]]:
        """``(shape, colour, x, y)`` of every shape visible at time ``t``."""
        return [(s.shape, s.colour_at(t), *s.position_at(t)) for s in self.shapes if s.visible(t)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["video_id"] = self.video_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        shapes = tuple(ShapeTrack(**s) for s in data["shapes"])
        return cls(seed=int(data["seed"]), index=int(data["index"]), seconds=int(data["seconds"]), shapes=shapes)


def _check_seconds(seconds: Any) -> int:
    if int(seconds) != seconds or seconds < MIN_SECONDS:
        raise SyntheticError(f"seconds must be a whole number >= {MIN_SECONDS}, not {seconds!r}")
    return int(seconds)


def make_clip(
    seed: int,
    index: int,
    *,
    seconds: int = 8,
    min_shapes: int = 1,
    max_shapes: int = 3,
    p_move: float = 0.6,
    p_turn: float = 0.5,
    p_disappear: float = 0.5,
) -> ClipSpec:
    """The clip ``index`` of the dataset ``seed``: shapes, colours, positions and event times.

    Deterministic: the same arguments always give an equal spec, on any machine (numpy's PCG64
    seeded with ``[seed, index]``). ``p_*`` are the chances that a shape tries to move, turn or
    disappear; an event that finds no free second is dropped.
    """
    seconds = _check_seconds(seconds)
    if int(seed) != seed or seed < 0 or int(index) != index or index < 0:
        raise SyntheticError(f"seed and index must be whole numbers >= 0, not {seed!r}, {index!r}")
    if not 1 <= min_shapes <= max_shapes <= len(SHAPES) - 1:
        raise SyntheticError(f"need 1 <= min_shapes <= max_shapes <= {len(SHAPES) - 1}")
    rng = np.random.default_rng([int(seed), int(index)])
    for _ in range(100):
        tracks = _sample_timeline(rng, seconds, min_shapes, max_shapes, p_move, p_turn, p_disappear)
        placed = _place(rng, tracks, seconds)
        if placed is not None:
            return ClipSpec(seed=int(seed), index=int(index), seconds=seconds, shapes=placed)
    raise SyntheticError(f"could not lay out clip {index} of seed {seed}")  # pragma: no cover


def _sample_timeline(rng, seconds, min_shapes, max_shapes, p_move, p_turn, p_disappear) -> list[dict]:
    """Kinds, colours and event times (no positions yet)."""
    sizes = np.arange(min_shapes, max_shapes + 1)
    weights = sizes.astype(float)  # more shapes, more to ask about
    n = int(rng.choice(sizes, p=weights / weights.sum()))
    n = min(n, seconds - 2)
    kinds = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:n]]
    colour_order = [COLOURS[i] for i in rng.permutation(len(COLOURS))]
    used = set(int(t) for t in rng.choice(np.arange(0, seconds - 2), size=n, replace=False))
    appears = sorted(used)
    tracks = [dict(shape=k, colour=colour_order[i], appear=a) for i, (k, a) in enumerate(zip(kinds, appears))]
    spare_colours = colour_order[n:]
    last = seconds - 1  # the latest second an event may take
    for i in rng.permutation(n):
        tr = tracks[i]
        a = tr["appear"]
        if rng.random() < p_move:
            duration = int(rng.choice(_MOVE_SECONDS))
            starts = list(range(a + 1, last - duration + 1))  # stop <= seconds - 1: seen at rest after
            if starts:
                s = int(rng.choice(starts))
                tr.update(move_start=s, move_end=s + duration, direction=DIRECTIONS[int(rng.integers(4))])
        for what in rng.permutation(["disappear", "turn"]):
            if what == "disappear" and rng.random() < p_disappear:
                lo = max(a + 1, tr.get("move_end", a) + 1, tr.get("turn", a) + 1)
                free = [t for t in range(lo, last + 1) if t not in used]
                if free:
                    tr["disappear"] = int(rng.choice(free))
                    used.add(tr["disappear"])
            elif what == "turn" and rng.random() < p_turn and spare_colours:
                hi = tr.get("disappear", seconds) - 1
                free = [t for t in range(a + 1, hi + 1) if t not in used]
                if free:
                    tr["turn"] = int(rng.choice(free))
                    tr["new_colour"] = spare_colours.pop(0)
                    used.add(tr["turn"])
    return tracks


def _place(rng, tracks: list[dict], seconds: int) -> tuple[ShapeTrack, ...] | None:
    """Positions and move distances such that shapes stay in frame and never overlap."""
    half = SHAPE_SIZE / 2 + _MARGIN
    times = np.arange(0, seconds, 0.125)
    for _ in range(200):
        out = []
        for tr in tracks:
            tr = dict(tr)
            x, y = rng.uniform(half, 1 - half, size=2)
            if "direction" in tr:
                dist = float(rng.uniform(*_MOVE_DISTANCE))
                ux, uy = _UNIT[tr["direction"]]
                room = 1 - 2 * half - dist
                start = half + rng.uniform(0, room) if room > 0 else None
                if start is None:
                    dist = 1 - 2 * half
                    start = half
                # start at the end the move leaves from
                if ux:
                    x = start if ux > 0 else 1 - start
                else:
                    y = start if uy > 0 else 1 - start
                tr["distance"] = round(dist, 4)
            tr["x"], tr["y"] = round(float(x), 4), round(float(y), 4)
            out.append(ShapeTrack(**tr))
        if _separated(out, times):
            return tuple(sorted(out, key=lambda s: s.appear))
    return None


def _separated(tracks: Sequence[ShapeTrack], times: np.ndarray) -> bool:
    need = SHAPE_SIZE + _GAP
    for t in times:
        live = [s.position_at(t) for s in tracks if s.visible(t)]
        for i in range(len(live)):
            for j in range(i + 1, len(live)):
                if abs(live[i][0] - live[j][0]) < need and abs(live[i][1] - live[j][1]) < need:
                    return False
    return True


# ---------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=64)
def _alpha(shape: str, px: int) -> np.ndarray:
    """Anti-aliased coverage [px, px] in [0, 1] of ``shape`` drawn in a px x px box (4x supersampled)."""
    ss = 4
    c = (np.arange(px * ss) + 0.5) / (px * ss) * 2 - 1  # [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        m = x * x + y * y <= 1.0
    elif shape == "square":
        m = (np.abs(x) <= 0.86) & (np.abs(y) <= 0.86)
    elif shape == "triangle":  # apex up: (0, -0.95), base corners (+-1, 0.85)
        m = (y <= 0.85) & (np.abs(x) <= (y + 0.95) / 1.8)
    elif shape == "cross":
        m = ((np.abs(x) <= 0.3) | (np.abs(y) <= 0.3)) & (np.abs(x) <= 1) & (np.abs(y) <= 1)
    else:
        raise SyntheticError(f"unknown shape {shape!r}")
    return m.reshape(px, ss, px, ss).mean(axis=(1, 3)).astype(np.float32)


def _check_size_fps(size: Any, fps: Any) -> tuple[int, float]:
    if int(size) != size or size < 16 or size % 2:
        raise SyntheticError(f"size must be an even number of pixels >= 16, not {size!r}")
    if not fps > 0:
        raise SyntheticError(f"fps must be > 0, not {fps!r}")
    return int(size), float(fps)


def num_frames(spec: ClipSpec, fps: float) -> int:
    return max(1, round(spec.seconds * fps))


def render_frames(spec: ClipSpec, size: int = 112, fps: float = 4) -> np.ndarray:
    """The clip as RGB uint8 ``[T, size, size, 3]``, ``T = round(seconds * fps)``; frame k shows time k / fps.

    This is exactly what :func:`render` encodes.
    """
    size, fps = _check_size_fps(size, fps)
    n = num_frames(spec, fps)
    px = max(4, round(SHAPE_SIZE * size))
    frames = np.empty((n, size, size, 3), np.uint8)
    bg = np.array(BACKGROUND, np.float32)
    canvas = np.empty((size, size, 3), np.float32)
    for k in range(n):
        t = k / fps + 1e-9  # an event at whole second e shows from the frame at e * fps on
        canvas[:] = bg
        for s in spec.shapes:
            if not s.visible(t):
                continue
            cx, cy = s.position_at(t)
            x0 = min(max(int(round(cx * size - px / 2)), 0), size - px)
            y0 = min(max(int(round(cy * size - px / 2)), 0), size - px)
            a = _alpha(s.shape, px)[..., None]
            col = np.array(PALETTE[s.colour_at(t)], np.float32)
            region = canvas[y0 : y0 + px, x0 : x0 + px]
            region += a * (col - region)
        np.rint(canvas, out=canvas)
        frames[k] = canvas
    return frames


def _encoder() -> str:
    import av

    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not in this FFmpeg build
            continue
    raise SyntheticError("this PyAV build can encode neither h264 (libx264) nor mpeg4")


def render(spec: ClipSpec, path: str | os.PathLike, size: int = 112, fps: float = 4, codec: str | None = None) -> Path:
    """Write the clip to ``path`` (mp4) with PyAV: h264 (libx264, crf 12, yuv420p) if available, else mpeg4."""
    import av

    frames = render_frames(spec, size, fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or _encoder()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, int(round(fps)))  # a keyframe a second: cheap seeks
        if codec == "libx264":
            # one thread: deterministic output, and generate() parallelises over clips instead
            stream.codec_context.options = {"crf": "12", "preset": "fast", "threads": "1"}
        else:
            stream.codec_context.bit_rate = 4_000_000
            stream.codec_context.options = {"threads": "1"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# ---------------------------------------------------------------------------------------------
# Questions


def _ref(s: ShapeTrack) -> str:
    """How a question names a shape: with its colour when that never changes."""
    return s.shape if s.turns else f"{s.colour} {s.shape}"


def _qa(cat: str, question: str, answer: str) -> dict[str, Any]:
    return {"question": question, "answer": answer, "category_id": _CAT[cat]}


def _candidates(spec: ClipSpec) -> dict[str, list[tuple[dict[str, Any], int]]]:
    """Every question the clip supports, by category, each with a priority (higher first)."""
    S = spec.shapes
    T = spec.seconds
    by_appear = sorted(S, key=lambda s: s.appear)
    out: dict[str, list[tuple[dict[str, Any], int]]] = {name: [] for name in CATEGORIES.values()}

    def add(cat: str, q: str, a: str, prio: int = 0) -> None:
        out[cat].append((_qa(cat, q, a), prio))

    # 0 colour
    for s in S:
        if not s.turns:
            add("colour", f"what colour is the {s.shape}?", s.colour)
    # 1 shape
    for s in S:
        for c in s.colours:
            add("shape", f"what shape is the {c} one?", s.shape)
    # 2 count
    add("count", "how many shapes appear?", COUNTS[len(S)])
    add("count", "how many shapes move?", COUNTS[sum(s.moves for s in S)])
    add("count", "how many shapes disappear?", COUNTS[sum(s.disappears for s in S)])
    add("count", "how many shapes change colour?", COUNTS[sum(s.turns for s in S)])
    add("count", "how many shapes are on screen at the end?", COUNTS[sum(not s.disappears for s in S)])
    n_colours = sum(len(s.colours) for s in S)
    if n_colours < len(COUNTS):
        add("count", "how many colours appear?", COUNTS[n_colours])
    for s in by_appear[1:]:  # the first has none by definition: its answer would be a give-away
        others = sum(o is not s and o.visible(s.appear) for o in S)
        add("count", f"how many other shapes are on screen when the {_ref(s)} appears?", COUNTS[others])
    # 3 direction
    for s in S:
        if s.moves:
            add("direction", f"which way does the {_ref(s)} move?", s.direction or "")
    # 4 order
    if len(S) >= 2:
        add("order", "what shape appears first?", by_appear[0].shape)
        add("order", "what shape appears last?", by_appear[-1].shape)
        if not by_appear[0].turns:
            add("order", "what colour is the shape that appears first?", by_appear[0].colour)
        if not by_appear[-1].turns:
            add("order", "what colour is the shape that appears last?", by_appear[-1].colour)
        add("order", f"what shape appears after the {_ref(by_appear[-2])}?", by_appear[-1].shape)
        add("order", f"what shape appears before the {_ref(by_appear[1])}?", by_appear[0].shape)
    gone = sorted((s for s in S if s.disappears), key=lambda s: s.disappear or 0)
    if len(gone) >= 2:
        add("order", "what shape disappears first?", gone[0].shape)
        add("order", "what shape disappears last?", gone[-1].shape)
    # 5 state: colour at a moment; only shapes on screen a second either side of it
    for x in S:
        for y in S:
            if x is y:
                continue
            moments = [(y.appear, "appears")] + ([(y.disappear, "disappears")] if y.disappears else [])
            for t, verb in moments:
                if x.appear <= t - 1 and x.end(T) >= t + 1:
                    q = f"what colour is the {x.shape} when the {_ref(y)} {verb}?"
                    add("state", q, x.colour_at(t), 2 if x.turns else 0)
        if x.turns:
            add("state", f"what colour does the {x.shape} turn?", x.new_colour or "", 1)
            add("state", f"what colour is the {x.shape} at first?", x.colour, 1)
    # 6 existence: positives and negatives; the best negatives mix a colour and a shape that occur
    present = {(c, s.shape) for s in S for c in s.colours}
    colours_here = {c for c, _ in present}
    shapes_here = {s for _, s in present}
    for c, sh in sorted(present):
        add("existence", f"does a {c} {sh} appear?", "yes")
    for c in COLOURS:
        for sh in SHAPES:
            if (c, sh) not in present:
                prio = (c in colours_here) + (sh in shapes_here)
                add("existence", f"does a {c} {sh} appear?", "no", prio)
    # 7 event
    for verb, who in (
        ("moves", [s for s in S if s.moves]),
        ("disappears", [s for s in S if s.disappears]),
        ("changes colour", [s for s in S if s.turns]),
    ):
        if len(who) == 1:
            add("event", f"what shape {verb}?", who[0].shape)
    return out


def _pick(cands: list[tuple[dict[str, Any], int]], rng: np.random.Generator, cat: str) -> dict[str, Any]:
    """One candidate: answer uniform over the answers on offer, then a question with that answer.

    Priorities steer toward the questions that need time (e.g. the colour of a shape that changes
    colour, when another appears), but only with probability 0.75, so no answer leaks from the
    template (the plain questions stay in the mix).
    """
    if cat == "existence":  # yes and no each half the time; the hardest negatives first
        want = "yes" if rng.random() < 0.5 else "no"
        pool = [c for c in cands if c[0]["answer"] == want] or cands
    else:
        pool = cands
    top = max(p for _, p in pool)
    if top > 0 and rng.random() < 0.75:
        pool = [c for c in pool if c[1] == top]
    answers = sorted({q["answer"] for q, _ in pool})
    weights = np.array([ANSWER_WEIGHTS.get(_CAT[cat], {}).get(a, 1.0) for a in answers])
    answer = answers[int(rng.choice(len(answers), p=weights / weights.sum()))]
    pool = [q for q, _ in pool if q["answer"] == answer]
    return dict(pool[int(rng.integers(len(pool)))])


def questions(spec: ClipSpec, rng: np.random.Generator | int | None = None, per_category: int = 1) -> list[dict[str, Any]]:
    """Questions about ``spec``: ``{"question", "answer", "category_id"}`` dicts, at most ``per_category``
    (distinct questions) per category, in category order. ``rng`` (a Generator or a seed) picks which."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng([spec.seed, spec.index, 1] if rng is None else rng)
    out: list[dict[str, Any]] = []
    for cat, cands in _candidates(spec).items():
        taken: set[str] = set()
        for _ in range(per_category):
            left = [c for c in cands if c[0]["question"] not in taken]
            if not left:
                break
            qa = _pick(left, rng, cat)
            taken.add(qa["question"])
            out.append(qa)
    return out


# ---------------------------------------------------------------------------------------------
# Dataset


def summarize(qa: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts per category, answer histogram and the blind baselines of a QA list.

    ``majority_baseline``: accuracy of always answering the most common answer.
    ``category_majority_baseline``: of answering each category's most common answer.
    ``question_prior_baseline``: of a blind model that answers each question with the most common
    answer of the same question text in the other half of the videos (else its category's most
    common answer there); 2-fold, folds by video. What the question text alone gives away.
    """
    n = len(qa)
    answers = Counter(q["answer"] for q in qa)
    by_cat: dict[int, Counter] = {}
    for q in qa:
        by_cat.setdefault(q["category_id"], Counter())[q["answer"]] += 1
    top = answers.most_common(1)[0] if n else ("", 0)

    def frac(x: int) -> float:
        return round(x / n, 4) if n else 0.0

    return {
        "questions": n,
        "categories": {
            CATEGORIES[c]: {
                "id": c,
                "questions": sum(cnt.values()),
                "majority_answer": cnt.most_common(1)[0][0],
                "majority_baseline": round(cnt.most_common(1)[0][1] / sum(cnt.values()), 4),
                "answers": dict(cnt.most_common()),
            }
            for c, cnt in sorted(by_cat.items())
        },
        "answers": dict(answers.most_common()),
        "majority_answer": top[0],
        "majority_baseline": frac(top[1]),
        "category_majority_baseline": frac(sum(c.most_common(1)[0][1] for c in by_cat.values())),
        "question_prior_baseline": frac(_question_prior_hits(qa)),
    }


def _question_prior_hits(qa: Sequence[dict[str, Any]]) -> int:
    videos = sorted({str(q.get("video_id", i)) for i, q in enumerate(qa)})
    fold_of = {v: i % 2 for i, v in enumerate(videos)}
    folds = [[q for i, q in enumerate(qa) if fold_of[str(q.get("video_id", i))] == f] for f in (0, 1)]
    hits = 0
    for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        by_text: dict[str, Counter] = {}
        by_cat: dict[int, Counter] = {}
        for q in train:
            by_text.setdefault(q["question"], Counter())[q["answer"]] += 1
            by_cat.setdefault(q["category_id"], Counter())[q["answer"]] += 1
        for q in test:
            prior = by_text.get(q["question"]) or by_cat.get(q["category_id"])
            hits += bool(prior) and prior.most_common(1)[0][0] == q["answer"]
    return hits


def _make_one(job: tuple) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seed, index, seconds, size, fps, video_dir, codec, per_category, write = job
    spec = make_clip(seed, index, seconds=seconds)
    qa = questions(spec, np.random.default_rng([seed, index, 1]), per_category=per_category)
    if write:
        render(spec, Path(video_dir) / f"{spec.video_id}.mp4", size=size, fps=fps, codec=codec)
    return spec.to_dict(), qa


def generate(
    out_dir: str | os.PathLike,
    n_videos: int,
    seed: int = 0,
    size: int = 112,
    fps: float = 4,
    seconds: int = 8,
    split: str = "test",
    *,
    first_index: int = 0,
    per_category: int = 1,
    workers: int | None = None,
    write_videos: bool = True,
) -> dict[str, Any]:
    """Write ``n_videos`` clips (indices ``first_index ...``) and their questions under ``out_dir``.

    Returns (and writes to ``{split}_summary.json``) the summary of :func:`summarize` plus the paths
    and settings. ``workers``: processes that render and encode (default: up to 4 CPUs; 1 = in
    this process). The files are the same whatever ``workers`` is.
    """
    started = time.perf_counter()
    size, fps = _check_size_fps(size, fps)
    seconds = _check_seconds(seconds)
    if n_videos < 0 or first_index < 0:
        raise SyntheticError("n_videos and first_index must be >= 0")
    if not split or any(ch in split for ch in "/\\"):
        raise SyntheticError(f"bad split name {split!r}")
    out = Path(out_dir)
    video_dir = out / "videos"
    out.mkdir(parents=True, exist_ok=True)
    if write_videos:
        video_dir.mkdir(exist_ok=True)
    codec = _encoder() if write_videos else None
    jobs = [
        (seed, first_index + i, seconds, size, fps, str(video_dir), codec, per_category, write_videos)
        for i in range(n_videos)
    ]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers > 1 and n_videos > 8:
        # spawn: forking a process that has threads (torch, a test runner) can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_make_one, jobs, chunksize=max(1, n_videos // (4 * workers))))
    else:
        results = [_make_one(job) for job in jobs]
    qa_all: list[dict[str, Any]] = []
    specs = []
    for spec_dict, qa in results:
        specs.append(spec_dict)
        for q in qa:
            qa_all.append(
                {
                    "question": q["question"],
                    "answer": q["answer"],
                    "id": len(qa_all),
                    "video_id": spec_dict["video_id"],
                    "category_id": q["category_id"],
                }
            )
    qa_path = out / f"{split}_qa.json"
    qa_path.write_text(json.dumps(qa_all, indent=1) + "\n")
    (out / f"{split}_clips.json").write_text(json.dumps(specs) + "\n")
    summary = {
        "split": split,
        "videos": n_videos,
        **summarize(qa_all),
        "seed": seed,
        "first_index": first_index,
        "size": size,
        "fps": fps,
        "seconds": seconds,
        "frames_per_video": round(seconds * fps),
        "codec": codec,
        "qa_path": str(qa_path),
        "video_dir": str(video_dir),
        "category_names": {str(k): v for k, v in CATEGORIES.items()},
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    (out / f"{split}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['videos']} videos ({summary['frames_per_video']} frames, {summary['size']}px, "
        f"{summary['fps']:g} fps, {summary['codec'] or 'not written'}), {summary['questions']} questions "
        f"in {summary['elapsed_s']} s",
        f"  {summary['qa_path']}  |  {summary['video_dir']}",
        f"{'id':>3} {'category':<10} {'questions':>9} {'majority':>9}  answers",
    ]
    for name, c in summary["categories"].items():
        hist = " ".join(f"{a}:{k}" for a, k in c["answers"].items())
        lines.append(f"{c['id']:>3} {name:<10} {c['questions']:>9} {c['majority_baseline']:>9.1%}  {hist}")
    lines.append(
        f"majority baseline {summary['majority_baseline']:.1%} ('{summary['majority_answer']}'), "
        f"per-category majority {summary['category_majority_baseline']:.1%}, "
        f"question-text prior {summary['question_prior_baseline']:.1%}"
    )
    return "\n".join(lines)
