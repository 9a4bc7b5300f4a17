"""Make an offline demo: a tiny *random* VoCo checkpoint in the LLaVA-1.5 layout and a short clip.

    python examples/make_demo.py demo
    vidqa ask demo/clip.mp4 "which way does the square move?" --model demo/tiny-voco-random

The model's weights are random: the answer is gibberish. The point is the whole path, offline, on a
CPU: decoding, sampling, CLIP, VoCo compression, the temporal cache, streaming. Trained demo models
come with `vidqa train`.
"""

import sys
from pathlib import Path

import av
import numpy as np

from vidqa.testing import make_voco_checkpoint


def write_clip(path: Path, seconds: int = 4, fps: int = 8, size: int = 96) -> None:
    """A red square crossing a grey field from left to right."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            img = np.full((size, size, 3), 128, np.uint8)
            x = int(i * (size - 24) / (seconds * fps - 1))
            img[36:60, x:x + 24] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo")
    out.mkdir(parents=True, exist_ok=True)
    write_clip(out / "clip.mp4")
    make_voco_checkpoint(out / "tiny-voco-random", max_positions=2048)
    print(f"wrote {out / 'clip.mp4'} and {out / 'tiny-voco-random'}")
