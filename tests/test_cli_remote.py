"""`vidqa ask` and `vidqa chat` with --server / VIDQA_SERVER: the same output as locally; one-line errors."""

import io
import json
import socket

from cli_helpers import one_line_error, run
from serve_helpers import CLIPS, demo_qa, served  # noqa: F401 (fixtures)

VIDEO = CLIPS / "shapes00.mp4"


def test_ask_through_the_server_prints_what_ask_prints(served, capsys, monkeypatch):
    server, _, _ = served
    local = run(capsys, "ask", VIDEO, "what colour is the square?", "--model", "tiny-voco", "--device", "cpu")
    remote = run(capsys, "ask", VIDEO, "what colour is the square?", "--server", server.url)
    assert local[0] == remote[0] == 0 and remote[1] == local[1] == "green\n"
    monkeypatch.setenv("VIDQA_SERVER", server.url)
    code, out, _ = run(capsys, "ask", VIDEO, "what colour is the square?", "--json")
    rep = json.loads(out)
    assert code == 0 and rep["answer"] == "green" and rep["server"] == server.url and len(rep["frames"]) == 8


def test_chat_through_the_server(served, capsys, monkeypatch):
    server, _, _ = served
    lines = "what colour is the square?\nhow many shapes appear?\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    local = run(capsys, "chat", VIDEO, "--model", "tiny-voco", "--device", "cpu", "--json")
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    remote = run(capsys, "chat", VIDEO, "--server", server.url, "--json")
    assert local[0] == remote[0] == 0
    pick = lambda out: [(t["question"], t["answer"], t["frames"]) for t in map(json.loads, out.splitlines())]  # noqa: E731
    assert pick(remote[1]) == pick(local[1])


def test_remote_errors_are_one_line(served, capsys, tmp_path):
    server, _, _ = served
    outside = tmp_path / "v.mp4"
    outside.write_bytes(VIDEO.read_bytes())
    code, _, err = run(capsys, "ask", outside, "what?", "--server", server.url)
    one_line_error(code, err, "allow-root", "403")
    code, _, err = run(capsys, "ask", tmp_path / "missing.mp4", "what?", "--server", server.url)
    one_line_error(code, err, "no such file")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "ask", VIDEO, "what?", "--server", f"http://127.0.0.1:{port}")
    one_line_error(code, err, "cannot reach the server")
