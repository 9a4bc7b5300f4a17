"""Tiny, deterministic test media made with PyAV (and PIL for still images).

Every video frame carries its own index as a block code: the frame is a grid of
``CODE_COLS x CODE_ROWS`` blocks, each bright (bit 1) or dark (bit 0), least
significant bit at the top-left, row by row.  Bright and dark are ~150 grey levels
apart, so the code survives lossy codecs and chroma subsampling, and
:func:`frame_index_from_pixels` reads it back from any decoded RGB frame.  A
smooth colour tint that also depends on the index keeps frames visually distinct
and gives colour conversion something to do; ``pattern="textured"`` adds seeded
noise on top, for content that compresses like real video.

Which codecs exist depends on the FFmpeg bundled in the PyAV wheel: check with
:func:`has_codec` and skip tests that need a missing one.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

CODE_COLS = 4
CODE_ROWS = 3
MAX_CODE = 2 ** (CODE_COLS * CODE_ROWS) - 1  # 4095: the largest index a frame can carry

Pattern = Literal["blocks", "textured"]


def has_codec(name: str) -> bool:
    """True if the bundled FFmpeg can encode or decode codec ``name``."""
    return name in av.codecs_available


def frame_pixels(index: int, size: tuple[int, int] = (64, 48), pattern: Pattern = "blocks") -> np.ndarray:
    """The RGB uint8 [H, W, 3] image that encodes ``index``; ``size`` is (width, height)."""
    if not 0 <= index <= MAX_CODE:
        raise ValueError(f"index {index} does not fit in the {CODE_COLS}x{CODE_ROWS} block code")
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    col = np.minimum(xs * CODE_COLS // width, CODE_COLS - 1)
    row = np.minimum(ys * CODE_ROWS // height, CODE_ROWS - 1)
    bits = (index >> (row * CODE_COLS + col)) & 1
    grey = np.where(bits == 1, 190.0, 40.0)
    # Smooth tint (+-25 levels) so channels differ and neighbouring frames differ beyond their code.
    phase = 0.7 * index
    tint = np.stack(
        [
            25 * np.sin(2 * np.pi * xs / width + phase),
            25 * np.cos(2 * np.pi * ys / height + phase),
            25 * np.sin(2 * np.pi * (xs + ys) / (width + height) - phase),
        ],
        axis=-1,
    )
    image = grey[..., None] + tint
    if pattern == "textured":
        rng = np.random.default_rng(index)
        image = image + rng.normal(0.0, 12.0, size=image.shape)
    elif pattern != "blocks":
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def frame_index_from_pixels(frame: np.ndarray) -> int:
    """Read back the index drawn by :func:`frame_pixels` from a decoded RGB [H, W, 3] frame."""
    height, width = frame.shape[:2]
    luma = frame.astype(np.float64).mean(axis=-1)
    index = 0
    for row in range(CODE_ROWS):
        for col in range(CODE_COLS):
            # The middle half of each block: away from edges where codecs blur the code.
            y0, y1 = row * height // CODE_ROWS, (row + 1) * height // CODE_ROWS
            x0, x1 = col * width // CODE_COLS, (col + 1) * width // CODE_COLS
            qy, qx = (y1 - y0) // 4, (x1 - x0) // 4
            block = luma[y0 + qy : y1 - qy, x0 + qx : x1 - qx]
            if block.mean() > 115:
                index |= 1 << (row * CODE_COLS + col)
    return index


def make_video(
    path: str | Path,
    num_frames: int = 30,
    fps: float = 10,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    pattern: Pattern = "blocks",
    gop: int | None = 10,
    with_audio: bool = False,
    faststart: bool = False,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    offset_frames: int = 0,
    rotation: int = 0,
) -> Path:
    """Write a constant-frame-rate video whose frame ``i`` shows :func:`frame_pixels(i)`.

    The container comes from the file extension (.mp4, .mkv, .webm, .mov, .ts ...).
    ``gop`` is the keyframe interval (small by default so seeking matters even in short
    clips); ``with_audio`` adds a sine track; ``faststart`` puts an mp4's index before
    its data, so a truncated copy still claims every frame (see :func:`truncate`);
    ``options`` are extra encoder options (e.g. ``{"x264-params": "open-gop=1"}``);
    ``offset_frames`` stamps the first frame at ``offset_frames / fps`` seconds, not 0.
    ``rotation`` (degrees counter-clockwise, a multiple of 90) stores every frame turned the other
    way and sets the stream's display matrix, as phones do: a player that honours it shows
    :func:`frame_pixels(i)` upright, one that ignores it shows it sideways. ``size`` is the upright size.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        stream = container.add_stream(codec, rate=rate)
        turns = (rotation // 90) % 4
        stream.width, stream.height = size if turns % 2 == 0 else size[::-1]
        if turns:
            stream.set_display_rotation(rotation)
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec in ("libvpx", "libvpx-vp9"):
            # Fixed quality and single thread: deterministic, and fast at this size.
            stream.codec_context.options = {"crf": "20", "b": "0", "deadline": "realtime", "threads": "1"}
        elif codec == "libx264":
            stream.codec_context.options = {"crf": "18", "threads": "1"}
        elif codec == "libx265":
            stream.codec_context.options = {"crf": "18", "x265-params": "log-level=error:pools=1:frame-threads=1"}
        if options:
            stream.codec_context.options = {**stream.codec_context.options, **options}
        audio = _add_sine_stream(container, "libopus" if path.suffix == ".webm" else "aac") if with_audio else None
        container.start_encoding()  # writes the header even when num_frames == 0

        for i in range(num_frames):
            stored = np.ascontiguousarray(np.rot90(frame_pixels(i, size, pattern), k=-turns))
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = i + offset_frames
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            _write_sine(container, audio, seconds=num_frames / float(rate))
    return path


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An audio file (a 440 Hz sine) with no video stream; .m4a/.mp4 get AAC, else PCM (.wav)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        codec = "aac" if path.suffix in (".m4a", ".mp4", ".mov") else "pcm_s16le"
        stream = _add_sine_stream(container, codec)
        _write_sine(container, stream, seconds)
    return path


def make_image(
    path: str | Path, index: int = 0, size: tuple[int, int] = (64, 48), format: str | None = None
) -> Path:
    """A still image showing :func:`frame_pixels(index)`; the format (e.g. "PNG") defaults to the extension's."""
    path = Path(path)
    Image.fromarray(frame_pixels(index, size)).save(path, format=format)
    return path


def make_png16(path: str | Path, size: tuple[int, int] = (40, 30)) -> tuple[Path, np.ndarray]:
    """A 16-bit greyscale PNG of a horizontal ramp over the whole 0..65535 range; returns the path and
    the 16-bit values written (``[H, W]`` uint16)."""
    path = Path(path)
    width, height = size
    ramp = np.round(np.linspace(0, 65535, width)).astype(np.uint16)
    values = np.ascontiguousarray(np.broadcast_to(ramp, (height, width)))
    Image.fromarray(values).save(path, format="PNG")  # uint16: mode I;16
    return path, values


def make_zero_length(path: str | Path) -> Path:
    """A 0-byte file (named like a video by the caller, e.g. ``empty.mp4``)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_garbage(path: str | Path, num_bytes: int = 4096, seed: int = 0) -> Path:
    """A file of seeded random bytes."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(num_bytes))
    return path


def make_text(path: str | Path) -> Path:
    """A plain text file."""
    path = Path(path)
    path.write_text("This is not a video.\nIt is two lines of text.\n")
    return path


def truncate(path: str | Path, keep: float = 0.5) -> Path:
    """Cut a file to its first ``keep`` fraction of bytes, in place.

    For a container whose header is written before the data (mp4 made with
    ``faststart=True``, mkv) the header still announces every frame while only the
    first part can be decoded: a container that over-reports its frame count.
    """
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _add_sine_stream(container: av.container.OutputContainer, codec: str) -> av.AudioStream:
    stream = container.add_stream(codec, rate=16000)
    stream.layout = "mono"
    return stream


def _write_sine(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    chunk = 1024
    total = int(rate * seconds)
    fmt = stream.codec_context.format.name  # e.g. "fltp" for aac, "s16" for pcm_s16le
    for start in range(0, total, chunk):
        t = np.arange(start, min(start + chunk, total)) / rate
        wave = 0.3 * np.sin(2 * math.pi * 440 * t)
        samples = (wave * 32767).astype(np.int16) if fmt.startswith("s16") else wave.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def videos(folder: Path, n: int, frames: int = 30) -> list[Path]:
    """n distinct videos (distinct content: the store is content addressed)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [make_video(folder / f"clip{i}.mp4", num_frames=frames + i, fps=10) for i in range(n)]
