"""What the serve tests share: the demo model behind a real uvicorn server on 127.0.0.1 (ephemeral port),
started and stopped by the fixture, and request builders."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "examples" / "clips"
QUESTIONS = [("shapes00.mp4", "what colour is the square?"), ("shapes00.mp4", "how many shapes appear?"),
             ("shapes01.mp4", "what colour is the circle?"), ("shapes01.mp4", "how many shapes appear?"),
             ("shapes02.mp4", "what shape appears first?"), ("shapes02.mp4", "how many shapes appear?"),
             ("shapes03.mp4", "what colour is the triangle?"), ("shapes03.mp4", "what shape appears last?")]


def video_part(path) -> dict:
    return {"type": "video_url", "video_url": {"url": Path(path).resolve().as_uri()}}


def messages(video, question) -> list[dict]:
    return [{"role": "user", "content": [video_part(video), {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def demo_qa():
    from vidqa import library
    from vidqa.options import ComputeOptions, ModelOptions

    return library.load_model(ModelOptions("tiny-voco"), ComputeOptions(device="cpu"))


@pytest.fixture(scope="module")
def served(demo_qa, tmp_path_factory):
    """(server, engine, store folder) for tiny-voco; files under examples/clips and a temp folder allowed."""
    from vidqa.serve.engine import Engine
    from vidqa.serve.server import Server
    from vidqa.store import Store

    root = tmp_path_factory.mktemp("serve")
    (root / "files").mkdir()
    engine = Engine(demo_qa, Store(root / "store"), allow_roots=[CLIPS, root / "files"], warmup_frames=4,
                    cache_host_bytes=1 << 30)
    server = Server(engine).start()
    yield server, engine, root
    server.stop()
