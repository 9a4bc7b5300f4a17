"""How long a server's search takes to find the caches it already holds (``search.indexed`` with ``hot``).

    python benchmarks/search_hot.py [--videos 1000] [--out OUT.json]      # CPU is enough (tiny-voco shapes)

Writes ``--videos`` store entries of one 8-frame cache (tiny VoCo model, random weights), lets their
files age past the hash memo's "just written" window, reads them once through an ``Engine`` search
(so its memory holds them all), then times ``search.indexed`` as ``Engine.search`` calls it, three
times (the steady state is the last two). No model runs in the timed part: it is keys and lookups.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true", help="20 videos (a smoke run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from serve_speed import build

    from vidqa import library, search
    from vidqa.checkpoint import quiet_transformers
    from vidqa.serve.engine import Engine
    from vidqa.serve.schema import SearchRequest
    from vidqa.store import Store
    from vidqa.video import Sampling

    quiet_transformers()
    n = 20 if args.tiny else args.videos
    qa = build("voco", True)
    work = Path(tempfile.mkdtemp())
    folder = work / "lib"
    folder.mkdir()
    store, sampling = Store(work / "store"), Sampling(fps=1.0)
    frames = SimpleNamespace(pixels=np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8),
                             timestamps=[i + 0.5 for i in range(8)], indices=list(range(8)))
    cache = qa.compress(frames).to("cpu")
    settings = library.cache_settings(qa, sampling)
    old = time.time() - 3600  # aged: the hash memo does not trust files written "just now"
    videos = []
    for i in range(n):
        v = folder / f"v{i:05d}.mp4"
        v.write_bytes(i.to_bytes(8, "little") * 16)
        os.utime(v, (old, old))
        library.put(store, store.key(v, settings), v, settings, cache, frames, qa.model_id)
        videos.append(v)
    engine = Engine(qa, Store(work / "store"), allow_roots=[work], warmup_frames=0, preload=0)
    engine.search(SearchRequest(query="a red circle", videos=[str(v) for v in videos]))  # now held in memory
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        found, missing = search.indexed(qa, engine.store, videos, sampling,
                                        hot=lambda key: engine.memory.get(("entry", key)), keep=engine._keep_entry)
        times.append(time.perf_counter() - t0)
        assert len(found) == n and not missing
    engine.close()
    res = {"videos": n, "indexed_hot_s": times, "cpus": os.cpu_count()}
    print(f"search_hot: {n} held videos found in {times[1]:.3f} / {times[2]:.3f} s (steady state)")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
