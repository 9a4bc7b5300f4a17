"""Video file to frames.

    info = probe("clip.mp4")                          # cheap: container header only
    indices = plan(info, Sampling(fps=2, max_frames=32))
    frames = load_frames("clip.mp4", Sampling(fps=2, max_frames=32))
    frames.pixels      # uint8 [T, H, W, 3], RGB, full resolution

Sampling rules
--------------
``Sampling.rule`` picks one of two rules (None: ``"midpoint"``; a model's default comes from its
method, ``VideoQA.resolve_sampling``: LLaVA-Mini uses ``"seq"``, as its official evaluation does).

``"midpoint"`` (vidqa's rule, and VoCo's default). The window is ``[start, end)`` in seconds, clipped to the video ``[0, duration)``
(``start`` defaults to 0, ``end`` to the duration). A window that starts at or after
the end of the video is an error. The number of frames is ``num_frames`` when given,
else ``max(1, round(window * fps))`` (halves round up); when ``max_frames`` is set and
exceeded, it becomes ``max_frames``. Frame ``i`` of ``n`` is taken at the midpoint of
its segment, ``t_i = start + (i + 0.5) * window / n``, and becomes the index of the
frame on screen at that time, ``floor(t_i * native_fps)``, clipped to
``[0, num_frames - 1]``. Duplicates are removed, so a request for more frames than the
window holds gives every frame of the window once.

``"seq"`` (LLaVA-Mini's official ``get_seq_frames``). The window's frames are ``first =
floor(start * native_fps)`` up to ``floor(end * native_fps)`` (exclusive; all frames by default),
``count`` of them. The number of frames is ``num_frames`` when given, else
``int(count // (native_fps / fps))`` (at ``fps=1`` exactly the official ``total // avg_fps``), at
least 1 and at most ``count``; ``max_frames`` caps it. With ``seg = (count - 1) / n``, frame ``i`` is
``first + (round(seg * i) + round(seg * (i + 1))) // 2``, rounding halves to even (``np.round``).
Duplicates are removed (the official loader would feed a repeated frame twice).

Memory
------
``load_frames(..., prepare=f)`` hands each decoded frame to ``f`` right away (vidqa passes the
model's ``fit`` to its input size, uint8) and keeps only what ``f`` returns, so memory holds the
sampled frames at the model's size (3 x 336 x 336 bytes = 339 KB each) plus one source frame and
the decoder's own buffers, whatever the source resolution. Without ``prepare`` the frames are kept at
full resolution.

Orientation and bit depth
-------------------------
Video frames are turned upright by their display matrix (``VideoFrame.rotation``, the side data
phones write); decord ignores it, so ``"auto"`` decodes rotated files with PyAV. Still images get
their EXIF rotation, and 16-bit images (PNG ``I;16``) are scaled to 8 bits (``round(v / 257)``),
not clipped.

Indices and times follow a constant-frame-rate model: frame ``k`` starts at ``k / fps``
seconds after the first frame, and ``duration = num_frames / fps``. ``Frames.timestamps``
are the real presentation times of the decoded frames, also counted from the first
frame (a file whose first frame is stamped 1.4 s reports 0.0 for it).

Still images (anything PIL recognises by content: jpg, png, webp, bmp ...) are a
one-frame video decoded by PIL (``decoder == "image"``, timestamp 0); sampling
options do not apply to them. Animated images are read as videos.

Decoders
--------
``"av"`` (PyAV) seeks to the keyframe before each wanted frame and decodes forward,
or keeps decoding when the next wanted frame is closer than a keyframe interval, and
identifies frames by their timestamps. ``"decord"`` uses decord's ``get_batch``.
Both give the same frames for the same indices: pixel-identical for 8-bit video; for
10-bit video the two FFmpeg builds convert to RGB differently (up to 13 levels apart,
about 1.3 on average).

``"auto"`` uses decord where it is reliable and PyAV everywhere else. decord 0.6.0 is
unmaintained and, in our tests or its issue tracker: returns wrong frames, silently,
after seeking in open-GOP streams (x265's default, x264 ``open-gop``) and in MPEG-TS;
seeks VP8/VP9 badly; leaks memory on HEVC and 4K; and can hang in ``get_batch`` when a
container over-reports its frame count. So ``"auto"`` sends those files to PyAV, checks
what decord reports (frame count, timestamps, shapes) before trusting it, runs it
under a watchdog, and on any doubt warns once (:class:`VideoWarning`) and
decodes with PyAV. A container that announces more frames than it holds (a truncated
file) is re-sampled over the frames that really decode, with a warning.

Every failure a user can cause raises :class:`vidqa.errors.VideoError` with one line.
"""

# Over 500 lines: two decoders (decord and PyAV) behind one sampling plan, with the checks that make decord
# safe (timeouts, validation against what decodes); splitting them would spread one contract over files.
from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from vidqa.errors import VideoError

if TYPE_CHECKING:
    import av.container
    import av.video

__all__ = [
    "Frames",
    "Sampling",
    "VideoInfo",
    "VideoWarning",
    "load_frames",
    "plan",
    "probe",
]

log = logging.getLogger(__name__)

Decoder = Literal["auto", "decord", "av"]
DECODERS: tuple[str, ...] = ("auto", "decord", "av")

# The decord watchdog: seconds allowed for one get_batch call. Generous, because a hang is
# rare and a slow-but-working decode (long GOPs, big frames) must not be cut short.
DECORD_TIMEOUT_S = 30.0
DECORD_TIMEOUT_PER_FRAME_S = 2.0

# Containers in which decord's frame-accurate seeking gave the right frames in our tests.
_DECORD_CONTAINERS = frozenset({"mov", "mp4", "matroska"})
# Beyond 1440p decord's memory use grows without bound (known leak on 4K).
_DECORD_MAX_PIXELS = 2560 * 1440
# How many packets to read when looking for open GOPs: enough for a few keyframe intervals.
_GOP_SCAN_PACKETS = 1000


RULES = ("midpoint", "seq")
PREPROCESS_MODES = ("official", "fast")  # vidqa.vision.PREPROCESS_MODES (video.py does not import torch)
# decord frames fetched per get_batch call: what is held at full resolution at once
DECORD_CHUNK = 8


class VideoWarning(RuntimeWarning):
    """The video was decoded, but not quite as asked: decord was distrusted and PyAV used
    instead, fewer frames decode than the container announces, or packets were damaged."""


@dataclass(frozen=True)
class Sampling:
    """Which frames to take; see the module docstring for the exact rule."""

    fps: float | None = 1.0  # frames per second to sample (ignored when num_frames is set)
    num_frames: int | None = None
    max_frames: int | None = None  # cap: sample fewer frames uniformly when exceeded
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    rule: str | None = None  # "midpoint" or "seq"; None: the model's method decides (midpoint without one)
    preprocess: str | None = None  # "official" or "fast" (vidqa.vision); None: official

    def __post_init__(self) -> None:
        if self.rule not in (None, *RULES):
            raise VideoError(f"unknown sampling rule {self.rule!r} (use {' or '.join(RULES)})")
        if self.preprocess not in (None, *PREPROCESS_MODES):
            raise VideoError(f"unknown preprocessing {self.preprocess!r} (use {' or '.join(PREPROCESS_MODES)})")
        if self.num_frames is None and self.fps is None:
            raise VideoError("sampling needs fps or num_frames")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise VideoError(f"fps must be a positive number, not {self.fps}")
        for name in ("num_frames", "max_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VideoError(f"{name} must be at least 1, not {value}")
        if self.start is not None and not (math.isfinite(self.start) and self.start >= 0):
            raise VideoError(f"start must be a time in seconds >= 0, not {self.start}")
        if self.end is not None and not (math.isfinite(self.end) and self.end > 0):
            raise VideoError(f"end must be a time in seconds > 0, not {self.end}")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise VideoError(f"start ({self.start:g} s) must be before end ({self.end:g} s)")


@dataclass(frozen=True)
class VideoInfo:
    """What probing the file tells; for an image: one frame, fps and duration 0."""

    path: str
    num_frames: int
    fps: float
    duration: float  # seconds, num_frames / fps
    width: int
    height: int
    is_image: bool


@dataclass
class Frames:
    pixels: np.ndarray  # uint8 [T, H, W, 3] RGB, contiguous
    timestamps: np.ndarray  # float64 [T], seconds from the first frame, of each decoded frame
    indices: np.ndarray  # int64 [T], frame index in the stream
    info: VideoInfo
    decoder: str  # "decord", "av" or "image"
    preprocess: str | None = None  # frames fitted to a model's input by this mode (VideoQA.load_frames); None: as decoded


# ---------------------------------------------------------------------------------------
# Probing


def probe(path: str | Path) -> VideoInfo:
    """Frame count, rate, duration and size, from the container header (no decoding)."""
    file = _existing_file(path)
    size = _still_image_size(file)
    if size is not None:
        width, height = size
        return VideoInfo(str(file), num_frames=1, fps=0.0, duration=0.0, width=width, height=height, is_image=True)
    with _open_av(file) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if not fps > 0:
            raise VideoError(f"{file}: the video stream has no frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not (width > 0 and height > 0):
            raise VideoError(f"{file}: the video stream has no frame size")
        num_frames = stream.frames or _estimate_frames(container, stream, fps)
        if num_frames <= 0:
            raise VideoError(f"{file} has no video frames")
        return VideoInfo(
            str(file),
            num_frames=num_frames,
            fps=fps,
            duration=num_frames / fps,
            width=width,
            height=height,
            is_image=False,
        )


def _existing_file(path: str | Path) -> Path:
    file = Path(path)
    if not file.exists():
        raise VideoError(f"no such file: {file}")
    if file.is_dir():
        raise VideoError(f"{file} is a directory, not a video or image file")
    if file.stat().st_size == 0:
        raise VideoError(f"{file} is empty (0 bytes)")
    return file


def _still_image_size(file: Path) -> tuple[int, int] | None:
    """(width, height) as displayed if PIL recognises ``file`` as a still image, else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            # PIL's MPEG plugin only identifies MPEG video; animations are videos (MPO is a
            # multi-picture *still* JPEG).
            if image.format == "MPEG" or (getattr(image, "n_frames", 1) > 1 and image.format != "MPO"):
                return None
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated a quarter turn
                width, height = height, width
            return width, height
    except Image.DecompressionBombError as error:
        raise VideoError(f"{file}: image too large ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


_EXIF_ORIENTATION = 0x0112


def _estimate_frames(container: av.container.InputContainer, stream: av.video.VideoStream, fps: float) -> int:
    """Frame count for containers without one in the header (mkv, webm, ts ...)."""
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
        if "matroska" in container.format.name and stream.start_time:
            # A Matroska segment's duration counts from time 0, not from the first frame.
            seconds -= float(stream.start_time * stream.time_base)
    else:
        # Raw streams (.h264 ...) carry no duration: count the packets, reading but not decoding.
        return sum(1 for packet in container.demux(stream) if packet.size)
    return round(seconds * fps)


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise VideoError("PyAV is not installed: pip install av") from None
    return av


def _import_decord() -> ModuleType | None:
    try:
        import decord
    except (ImportError, OSError):  # OSError: the wheel is there but its libdecord.so does not load
        return None
    return decord


def _open_av(file: Path) -> av.container.InputContainer:
    """Open ``file`` with PyAV; it must hold a video stream."""
    av = _import_av()
    try:
        container = av.open(str(file))
    except av.error.EOFError:
        raise VideoError(f"{file} has no video frames (it ends before the first one)") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        raise VideoError(f"{file} is not a video or image file") from None
    # FFmpeg's "tty" demuxer renders text files (.ans, .nfo ...) as ANSI art: not a video.
    if container.format.name == "tty":
        container.close()
        raise VideoError(f"{file} is not a video or image file")
    if not container.streams.video:
        audio_only = bool(container.streams.audio)
        container.close()
        raise VideoError(f"{file} has no video stream" + (" (it is audio only)" if audio_only else ""))
    return container


# ---------------------------------------------------------------------------------------
# Planning


def plan(info: VideoInfo, sampling: Sampling) -> np.ndarray:
    """Frame indices (int64, sorted, unique) that ``sampling`` picks from ``info``; no IO."""
    if info.is_image:
        return np.zeros(1, dtype=np.int64)
    start = sampling.start or 0.0
    if start >= info.duration:
        raise VideoError(f"start ({start:g} s) is at or after the end of the video ({info.duration:g} s)")
    end = info.duration if sampling.end is None else min(sampling.end, info.duration)
    window = end - start
    if sampling.num_frames is not None:
        n = sampling.num_frames
    else:
        assert sampling.fps is not None  # Sampling guarantees one of them
        n = max(1, math.floor(window * sampling.fps + 0.5))
    if sampling.max_frames is not None and n > sampling.max_frames:
        n = sampling.max_frames
    if sampling.rule == "seq":
        return _seq_frames(info, sampling, start, end)
    # t_i * fps, in frames; a midpoint that falls on a frame boundary belongs to the frame
    # starting there, and the epsilon keeps float error (2.7 * 10 = 26.999...) from moving it back.
    positions = start * info.fps + (2 * np.arange(n) + 1) * (window * info.fps) / (2 * n)
    indices = np.clip(np.floor(positions + 1e-9), 0, info.num_frames - 1).astype(np.int64)
    return np.unique(indices)


def _seq_frames(info: VideoInfo, sampling: Sampling, start: float, end: float) -> np.ndarray:
    """LLaVA-Mini's ``get_seq_frames`` over the window's frames (the module docstring's ``"seq"``)."""
    first = min(int(math.floor(start * info.fps + 1e-9)), info.num_frames - 1)
    last = info.num_frames if sampling.end is None else min(info.num_frames, int(math.floor(end * info.fps + 1e-9)))
    count = max(1, last - first)
    if sampling.num_frames is not None:
        n = sampling.num_frames
    else:
        assert sampling.fps is not None
        n = int(count // (info.fps / sampling.fps))
    n = max(1, min(n, count))
    if sampling.max_frames is not None:
        n = min(n, sampling.max_frames)
    seg = float(count - 1) / n
    picks = [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(n)]
    return np.unique(first + np.asarray(picks, dtype=np.int64))


def _checked_indices(indices: Sequence[int] | np.ndarray, info: VideoInfo) -> np.ndarray:
    wanted = np.asarray(indices).ravel()
    if wanted.size == 0:
        raise VideoError("no frame indices given")
    if wanted.dtype.kind not in "iu":
        raise VideoError(f"frame indices must be integers, not {wanted.dtype}")
    outside = wanted[(wanted < 0) | (wanted >= info.num_frames)]
    if outside.size:
        raise VideoError(f"frame index {outside[0]} is outside {info.path} (frames 0 to {info.num_frames - 1})")
    return np.unique(wanted.astype(np.int64))


# ---------------------------------------------------------------------------------------
# Loading


def load_frames(
    path: str | Path,
    sampling: Sampling = Sampling(),
    decoder: Decoder = "auto",
    indices: Sequence[int] | np.ndarray | None = None,
    prepare: Prepare | None = None,
) -> Frames:
    """Decode the frames that ``sampling`` (or the explicit ``indices``) picks from ``path``.

    ``prepare(frame, still)``: called on each decoded uint8 ``[H, W, 3]`` frame (``still``: the file is
    a still image) as soon as it is decoded; its uint8 result is what ``Frames.pixels`` holds.
    """
    if decoder not in DECODERS:
        raise VideoError(f"unknown decoder {decoder!r}: use one of {', '.join(DECODERS)}")
    info = probe(path)
    if info.is_image:
        return _load_image(info, prepare)
    wanted = plan(info, sampling) if indices is None else _checked_indices(indices, info)
    try:
        used, decoded = _decode(info, wanted, decoder, prepare)
    except _ShortVideo as short:
        if short.frames == 0:
            raise VideoError(f"{info.path}: no frame of the video can be decoded") from None
        message = f"{info.path}: the container announces {info.num_frames} frames but only {short.frames} decode"
        # Counts estimated from a duration are often a frame or two high (the audio runs on a
        # little); only a shortfall of over a second (a truncated file) deserves a warning.
        if info.num_frames - short.frames > info.fps:
            warnings.warn(message + "; sampling those", VideoWarning, stacklevel=2)
        else:
            log.debug(message)
        info = replace(info, num_frames=short.frames, duration=short.frames / info.fps)
        wanted = plan(info, sampling) if indices is None else np.unique(np.minimum(wanted, short.frames - 1))
        try:
            used, decoded = _decode(info, wanted, decoder, prepare)
        except _ShortVideo:
            raise VideoError(f"{info.path}: the frames that decode change from one read to the next") from None
    return Frames(decoded.pixels, decoded.timestamps, decoded.indices, info, used)


@dataclass
class _Decoded:
    pixels: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray


class _ShortVideo(Exception):
    """The stream ends before a wanted frame: only ``frames`` frames really decode."""

    def __init__(self, frames: int):
        super().__init__(frames)
        self.frames = frames


class _DecordFault(Exception):
    """decord failed or gave something that did not validate; the message says what."""


Prepare = Callable[[np.ndarray, bool], np.ndarray]


def _decode(info: VideoInfo, wanted: np.ndarray, decoder: str, prepare: Prepare | None = None) -> tuple[str, _Decoded]:
    if decoder == "av":
        return "av", _decode_av(info, wanted, prepare)
    decord = _import_decord()
    if decoder == "decord":
        if decord is None:
            raise VideoError("decord is not installed: pip install decord, or use the av decoder")
        risk = _decord_risk(info)
        if risk:
            message = f"{info.path}: decord may return wrong frames here ({risk})"
            warnings.warn(message, VideoWarning, stacklevel=3)
        try:
            return "decord", _decode_decord(decord, info, wanted, prepare)
        except _DecordFault as fault:
            raise VideoError(f"decord failed on {info.path}: {fault}; the av decoder may work") from None
    # auto
    if decord is None:
        return "av", _decode_av(info, wanted, prepare)
    risk = _decord_risk(info)
    if risk:
        log.debug("%s: using PyAV, not decord: %s", info.path, risk)
        return "av", _decode_av(info, wanted, prepare)
    try:
        return "decord", _decode_decord(decord, info, wanted, prepare)
    except _DecordFault as fault:
        warnings.warn(f"{info.path}: decord {fault}; decoding with PyAV instead", VideoWarning, stacklevel=3)
        return "av", _decode_av(info, wanted, prepare)


def _load_image(info: VideoInfo, prepare: Prepare | None = None) -> Frames:
    from PIL import Image, ImageOps

    try:
        with Image.open(info.path) as image:
            rgb = _rgb8(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise VideoError(f"{info.path}: cannot decode the image ({error})") from None
    if prepare is not None:
        rgb = prepare(rgb, True)
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[None])
    return Frames(pixels, np.zeros(1), np.zeros(1, dtype=np.int64), info, "image")


def _rgb8(image) -> np.ndarray:
    """A PIL image as uint8 RGB ``[H, W, 3]``. Greyscale of more than 8 bits (``I;16*``, ``I``: 16-bit
    PNG and TIFF) is scaled by 1/257 and rounded; PIL's ``convert("RGB")`` would clip it at 255."""
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image).astype(np.float64)
        if image.mode == "I" and grey.max(initial=0) <= 255:
            # mode I from an 8-bit source (rare) keeps its levels
            grey8 = np.clip(grey, 0, 255).astype(np.uint8)
        else:
            grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# decord


def _decord_risk(info: VideoInfo) -> str | None:
    """Why decord should not be trusted with this file, or None."""
    if info.width * info.height > _DECORD_MAX_PIXELS:
        return f"{info.width}x{info.height} frames: decord leaks memory beyond 1440p"
    with _open_av(Path(info.path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if not _DECORD_CONTAINERS.intersection(container.format.name.split(",")):
            return f"{container.format.name} container: decord seeks to the wrong frames in it"
        if codec in ("vp8", "vp9"):
            return f"{codec.upper()}: decord seeks it unreliably"
        if codec == "hevc":
            return "HEVC: decord leaks memory on it"
        if _has_open_gop(container, stream):
            return "open-GOP stream: decord returns the wrong frames after seeking"
    if _first_frame_rotation(Path(info.path)):
        return "display-matrix rotation: decord ignores it"
    return None


def _first_frame_rotation(file: Path) -> int:
    """The display rotation of the first frame (degrees counter-clockwise; 0 when there is none)."""
    av = _import_av()
    with _open_av(file) as container:
        try:
            for frame in container.decode(video=0):
                return _rotation(frame)
        except av.FFmpegError:
            return 0
    return 0


def _rotation(frame) -> int:
    """A decoded frame's display rotation in quarter turns counter-clockwise (0..3)."""
    try:
        degrees = frame.rotation
    except (AttributeError, ValueError, TypeError):  # PyAV before 14, or no display matrix
        return 0
    return int(round((degrees or 0) / 90)) % 4


def _upright(frame, pixels: np.ndarray) -> np.ndarray:
    """Pixels of ``frame`` turned as its display matrix says."""
    turns = _rotation(frame)
    return np.ascontiguousarray(np.rot90(pixels, k=turns)) if turns else pixels


def _has_open_gop(container: av.container.InputContainer, stream: av.video.VideoStream) -> bool:
    """True if a keyframe is followed, in decode order, by a frame shown before it.

    Such "leading" frames need the previous GOP to decode; decord seeks to the keyframe
    and counts frames from there, so every index after a seek comes out shifted.
    """
    key_pts: int | None = None
    for count, packet in enumerate(container.demux(stream)):
        if count >= _GOP_SCAN_PACKETS or packet.pts is None:
            break
        if packet.is_keyframe:
            key_pts = packet.pts
        elif key_pts is not None and packet.pts < key_pts:
            return True
    return False


def _decode_decord(decord: ModuleType, info: VideoInfo, wanted: np.ndarray, prepare: Prepare | None = None) -> _Decoded:
    try:
        reader = decord.VideoReader(info.path, ctx=decord.cpu(0))
        reported = len(reader)
    except Exception as error:  # DECORDError, RuntimeError, AssertionError: all mean "cannot open"
        raise _DecordFault(f"cannot open the file ({_reason(error)})") from None
    if wanted[-1] >= reported:
        raise _ShortVideo(reported)
    try:
        # decord's timestamps come from its packet table; an index past that table means its
        # frame count is wrong, and asking get_batch for it is what hangs.
        times = reader.get_frame_timestamp(wanted)[:, 0]
        time_zero = float(reader.get_frame_timestamp([0])[0, 0])
    except IndexError:
        raise _DecordFault(f"reports {reported} frames but has timestamps for fewer") from None
    except Exception as error:
        raise _DecordFault(f"cannot read frame timestamps ({_reason(error)})") from None
    times = times - time_zero
    # PyAV identifies frames by timestamp; decord counts them. They agree only at a constant rate.
    off = np.abs(times * info.fps - wanted)
    if off.max() > 0.5:
        bad = int(wanted[off.argmax()])
        raise _DecordFault(
            f"puts frame {bad} at {times[off.argmax()]:.3f} s, not {bad / info.fps:.3f} s (variable frame rate)"
        )
    out: list[np.ndarray] = []
    # in chunks: only DECORD_CHUNK frames are held at full resolution at a time
    for i in range(0, len(wanted), DECORD_CHUNK):
        part = wanted[i:i + DECORD_CHUNK]
        timeout = DECORD_TIMEOUT_S + DECORD_TIMEOUT_PER_FRAME_S * len(part)
        batch = _call_with_timeout(lambda: reader.get_batch(part), timeout)
        # decord's bridge is process-wide state: another module may have set it to torch.
        pixels = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        expected = (len(part), info.height, info.width, 3)
        if pixels.shape != expected or pixels.dtype != np.uint8:
            raise _DecordFault(f"returned {pixels.dtype} {pixels.shape}, not uint8 {expected}")
        out.extend(prepare(p, False) for p in pixels) if prepare is not None else out.append(pixels)
    stacked = np.stack(out) if prepare is not None else np.concatenate(out)
    return _Decoded(np.ascontiguousarray(stacked), times.astype(np.float64), wanted.copy())


_T = TypeVar("_T")


def _call_with_timeout(call: Callable[[], _T], timeout: float) -> _T:
    """Run a decord call in a watchdog thread; raise _DecordFault if it fails or hangs.

    decord is called through ctypes, which releases the GIL, so this thread keeps running
    while a native call spins. The worker is a daemon thread: an abandoned, stuck call
    cannot keep the process alive at exit.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except Exception as error:
            outcome["error"] = error

    worker = threading.Thread(target=work, name="vidqa-decord", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _DecordFault(f"get_batch did not return within {timeout:.0f} s (a known decord hang)")
    if "error" in outcome:
        raise _DecordFault(f"failed ({_reason(outcome['error'])})")
    return outcome["value"]


def _reason(error: BaseException) -> str:
    """One line of an exception's message, without decord's "[12:00:00] src/file.cc:42: " prefixes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[-1] if lines else type(error).__name__  # decord puts its reason on the last line
    return _DECORD_PREFIX.sub("", line) or type(error).__name__


_DECORD_PREFIX = re.compile(r"\[[\d:]+\] \S+?:\d+: ")


# ---------------------------------------------------------------------------------------
# PyAV


def _decode_av(info: VideoInfo, wanted: np.ndarray, prepare: Prepare | None = None) -> _Decoded:
    av = _import_av()
    with _open_av(Path(info.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads; seeking flushes them correctly
        reader = _AvReader(container, stream, info.fps, av.FFmpegError)
        # Each picked frame is converted (and prepared) at once: no decoded frame is kept beyond its turn.
        indices: list[int] = []
        times: list[float] = []
        pixels: list[np.ndarray] = []
        for target in wanted.tolist():
            found = reader.frame_at(target)
            if found is None:
                raise _ShortVideo(reader.last_index + 1)
            # Where the file skips frames, neighbouring targets can get the same frame: keep it once.
            if not indices or found[0] > indices[-1]:
                index, frame = found
                # width/height: a stream that changes size mid-way still stacks (no-op otherwise)
                rgb = _upright(frame, frame.to_ndarray(format="rgb24", width=info.width, height=info.height))
                pixels.append(prepare(rgb, False) if prepare is not None else rgb)
                indices.append(index)
                times.append(reader.seconds(index, frame))
        if reader.damaged:
            warnings.warn(f"{info.path}: skipped {reader.damaged} damaged packets", VideoWarning, stacklevel=4)
        return _Decoded(
            np.ascontiguousarray(np.stack(pixels)),
            np.array(times, dtype=np.float64),
            np.array(indices, dtype=np.int64),
        )


class _AvReader:
    """Frames of one PyAV stream, by index, for increasing targets.

    Index of a frame = round(seconds after the first frame * fps), from its pts; streams
    without timestamps (raw .h264) are read from the start and their frames counted.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.VideoStream,
        fps: float,
        ffmpeg_error: type[Exception],
    ):
        self.container = container
        self.stream = stream
        self.fps = fps
        self.ffmpeg_error = ffmpeg_error
        self.timed = stream.start_time is not None
        self.start_pts = stream.start_time or 0
        self.time_base = float(stream.time_base) if stream.time_base else 0.0
        self.frames: Iterator[av.VideoFrame] | None = None
        self.head: tuple[int, av.VideoFrame] | None = None  # next frame not yet passed
        self.previous: tuple[int, av.VideoFrame] | None = None
        self.last_index = -1  # largest index decoded so far
        self.counted = 0  # frames decoded since the start (untimed streams)
        self.last_key: int | None = None
        self.gop = 0  # lower bound on the keyframe interval, in frames
        self.damaged = 0

    def frame_at(self, target: int) -> tuple[int, av.VideoFrame] | None:
        """The frame with index ``target`` (or the nearest one when the file skips it); None past the end."""
        if self.frames is None:
            if target > 0 and self.timed:
                self._seek(target)
            else:
                self._restart(None)
        elif self.head is not None and self.timed and target - self.head[0] > max(self.gop, self.fps):
            # Past the longest keyframe interval seen, the keyframe before the target is ahead
            # of us, so seeking skips frames; closer than that (or than a second, while the
            # interval is still unknown), decoding on is cheaper.
            self._seek(target)
        while self.head is not None and self.head[0] < target:
            self.previous = self.head
            self._advance()
        if self.head is None:
            return None
        before, after = self.previous, self.head
        if after[0] > target and before is not None and target - before[0] < after[0] - target:
            return before
        return after

    def seconds(self, index: int, frame: av.VideoFrame) -> float:
        if frame.pts is None:
            return index / self.fps
        return (frame.pts - self.start_pts) * self.time_base

    def _seek(self, target: int) -> None:
        back = 0
        while True:
            index = max(target - back, 0)
            if index == 0:
                # Aim before the first frame: MPEG-TS seeks land on the next keyframe, not the previous.
                self._restart(self.start_pts - int(1 / self.time_base))
            else:
                self._restart(self.start_pts + int(index / self.fps / self.time_base))
            # Demuxers may pick the keyframe by decode time, open-GOP decoders drop the frames
            # before the keyframe, and a truncated file's index points past its data: when we
            # land after the target or nowhere, retry from further back.
            if (self.head is not None and self.head[0] <= target) or index == 0:
                return
            back = max(2 * back, math.ceil(self.fps))

    def _restart(self, pts: int | None) -> None:
        if pts is not None:
            self.container.seek(pts, stream=self.stream, backward=True)
        self.frames = self._decode()
        self.previous = None
        self.last_key = None
        self._advance()

    def _advance(self) -> None:
        assert self.frames is not None
        frame = next(self.frames, None)
        if frame is None:
            self.head = None
            return
        if self.timed and frame.pts is not None:
            index = round((frame.pts - self.start_pts) * self.time_base * self.fps)
        else:
            index = self.counted
        self.counted += 1
        if frame.key_frame:
            self.last_key = index
        if self.last_key is not None:
            self.gop = max(self.gop, index - self.last_key)
        self.last_index = max(self.last_index, index)
        self.head = (index, frame)

    def _decode(self) -> Iterator[av.VideoFrame]:
        """Decoded frames from the current position; a damaged packet is skipped, not fatal."""
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except self.ffmpeg_error:  # a truncated file ends in a read error
                packet = None
            try:
                # packet None: flush the decoder's delayed frames, then stop
                yield from self.stream.decode(packet)
            except self.ffmpeg_error:
                self.damaged += 1
            if packet is None:
                return
