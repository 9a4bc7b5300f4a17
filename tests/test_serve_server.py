"""The uvicorn runner: an ephemeral port on 127.0.0.1, /health 503 until warm-up is done, then 200; stop."""

import httpx

from serve_helpers import demo_qa  # noqa: F401 (fixture)
from vidqa.serve.engine import Engine
from vidqa.serve.server import Server


def test_health_says_ready_only_after_warm_up(demo_qa, tmp_path):
    engine = Engine(demo_qa, None, allow_roots=[tmp_path], warmup_frames=2)
    server = Server(engine).start(warm_up=False)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        r = httpx.get(server.url + "/health")
        assert r.status_code == 503 and r.json() == {"status": "starting"}
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": []})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        engine.warm_up()
        r = httpx.get(server.url + "/health")
        assert r.status_code == 200 and r.json()["status"] == "ready"
    finally:
        server.stop()
    assert not server._thread.is_alive()


def test_a_server_hands_the_gil_over_sooner_than_python_s_default(demo_qa, tmp_path, monkeypatch):
    """The event loop waits for the GIL behind the decoding thread: a server shortens the switch interval
    (never lengthens one set shorter)."""
    import sys

    from vidqa.serve import server as server_mod

    monkeypatch.setattr(sys, "getswitchinterval", lambda: 0.005)
    got = []
    monkeypatch.setattr(sys, "setswitchinterval", got.append)
    Server(Engine(demo_qa, None, allow_roots=[tmp_path], warmup_frames=0)).stop()
    assert got == [server_mod.SWITCH_INTERVAL_S] and server_mod.SWITCH_INTERVAL_S <= 0.001
    monkeypatch.setattr(sys, "getswitchinterval", lambda: 0.0001)
    Server(Engine(demo_qa, None, allow_roots=[tmp_path], warmup_frames=0)).stop()
    assert got[-1] == 0.0001
