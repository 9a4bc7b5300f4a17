"""The OpenAI-compatible API against a real uvicorn server on 127.0.0.1, with the real `openai` client and
plain HTTP: answers equal `vidqa ask`'s, every bad request gets its status and the server keeps
serving, eight concurrent clients get their own answers."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from cli_helpers import run
from serve_helpers import CLIPS, QUESTIONS, demo_qa, messages, served, video_part  # noqa: F401 (fixtures)


def client(server, key="none"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(server, video, question, stream=False, **extra):
    c = client(server)
    msgs = messages(CLIPS / video, question)
    if not stream:
        r = c.chat.completions.create(model="tiny-voco", messages=msgs, extra_body=extra or None)
        return r.choices[0].message.content
    chunks = c.chat.completions.create(model="tiny-voco", messages=msgs, stream=True, extra_body=extra or None)
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def still_serving(server):
    assert ask(server, "shapes00.mp4", "what colour is the square?") == "green"


@pytest.mark.parametrize("video,question", QUESTIONS[:3])
def test_stream_and_not_give_the_text_of_vidqa_ask(served, capsys, video, question):
    server, _, _ = served
    code, out, _ = run(capsys, "ask", CLIPS / video, question, "--model", "tiny-voco", "--device", "cpu")
    assert code == 0
    assert ask(server, video, question) == out.strip()
    assert ask(server, video, question, stream=True) == out.strip()


def test_models_health_and_the_vidqa_fields(served):
    server, engine, _ = served
    assert [m.id for m in client(server).models.list().data] == ["tiny-voco"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ready"
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"messages": messages(CLIPS / "shapes00.mp4", "what colour is the square?"), "max_tokens": 8,
                         "fps": 2, "start": 1, "end": 5}).json()
    assert r["object"] == "chat.completion" and r["choices"][0]["finish_reason"] in ("stop", "length")
    times = [f["time"] for f in r["vidqa"]["frames"]]
    assert times and all(1 <= t <= 5 for t in times) and len(times) == 8  # 2 fps over 4 s
    assert r["usage"]["completion_tokens"] >= 1
    v = r["vidqa"]  # the server's time to first token, split honestly: copy + method prefill + the LLM's first token
    assert v["frames_on"] == "device" and v["copy_s"] == 0 and v["prefill_s"] > 0 and v["first_token_s"] > 0
    assert abs(v["time_to_first_token_s"] - (v["copy_s"] + v["prefill_s"] + v["first_token_s"])) < 2e-4


def test_sse_wire_format(served):
    server, _, _ = served
    body = {"messages": messages(CLIPS / "shapes00.mp4", "what colour is the square?"), "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "green"
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and chunks[-1]["choices"] == []


def status_of(server, **kw):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, **kw)
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return r.status_code, body["error"]


def body_for(path, question="what colour is the square?", **extra):
    return {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": path}},
                                                      {"type": "text", "text": question}]}], **extra}


def test_bad_requests_get_their_status_and_the_server_keeps_serving(served, tmp_path):
    server, _, root = served
    outside = tmp_path / "outside.mp4"
    outside.write_bytes((CLIPS / "shapes00.mp4").read_bytes())
    link = root / "files" / "link.mp4"
    link.symlink_to(outside)  # inside by name, outside in fact
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (dict(content=b"[1, 2]"), 400, "invalid_json"),
        (dict(json={"messages": []}), 400, None),
        (dict(json=body_for(outside.as_uri())), 403, "path_not_allowed"),
        (dict(json=body_for(link.as_uri())), 403, "path_not_allowed"),
        (dict(json=body_for("file:///etc/passwd")), 403, "path_not_allowed"),
        (dict(json=body_for((CLIPS / "missing.mp4").as_uri())), 404, "file_not_found"),
        (dict(json=body_for("https://example.com/v.mp4")), 400, "unsupported_url"),
        (dict(json=body_for((CLIPS / "shapes00.mp4").as_uri(), "what " * 3000)), 400, "context_length_exceeded"),
        (dict(json=body_for((CLIPS / "shapes00.mp4").as_uri(), "what " * 1550, max_tokens=1000)), 400, "context_length_exceeded"),
        (dict(json=body_for((CLIPS / "shapes00.mp4").as_uri(), max_tokens=0)), 400, None),
        (dict(json=body_for((CLIPS / "shapes00.mp4").as_uri(), temperature="hot")), 400, None),
        (dict(json=body_for((CLIPS / "shapes00.mp4").as_uri(), start=5, end=2)), 400, None),
        (dict(content=b"{" + b" " * (2 << 20) + b"}"), 413, "request_too_large"),
    ]
    for kw, status, code in cases:
        got, error = status_of(server, **kw)
        assert got == status, (kw.get("json"), error)
        if code:
            assert error["code"] == code, error
        still_serving(server)
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model="tiny-voco", messages=[{"role": "user", "content": "hi"}])
    still_serving(server)


def test_an_unreadable_video_is_422(served):
    server, _, root = served
    bad = root / "files" / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    code, error = status_of(server, json=body_for(bad.as_uri()))
    assert code == 422 and error["code"] == "unreadable_video"
    still_serving(server)


def test_api_key(served):
    from vidqa.serve.server import Server

    _, engine, _ = served
    with Server(engine, api_key="s3cret", own_engine=False) as locked:
        with pytest.raises(openai.AuthenticationError):
            client(locked, "wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            ask(locked, "shapes00.mp4", "what colour is the square?")
        assert httpx.get(locked.url + "/health").status_code == 200  # health needs no key
        assert [m.id for m in client(locked, "s3cret").models.list().data] == ["tiny-voco"]
        c = client(locked, "s3cret")
        r = c.chat.completions.create(model="tiny-voco", messages=messages(CLIPS / "shapes00.mp4", "what colour is the square?"))
        assert r.choices[0].message.content == "green"


def test_eight_concurrent_clients_get_their_own_answers(served):
    server, _, _ = served
    sequential = [ask(server, v, q) for v, q in QUESTIONS]

    def one(i):
        v, q = QUESTIONS[i]
        return ask(server, v, q, stream=bool(i % 2))

    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(one, range(8)))
    assert concurrent == sequential


def test_search_route(served, capsys):
    server, engine, root = served
    clips = [CLIPS / f"shapes0{i}.mp4" for i in (4, 5, 6)]  # not asked about by the other tests
    for c in clips[:2]:  # index two of them through the server's own store
        ask(server, c.name, "what colour is the square?")
    r = httpx.post(server.url + "/v1/search", json={"query": "a green square", "videos": [c.as_uri() for c in clips],
                                                    "top_k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {d["video"] for d in body["data"]} == {str(c) for c in clips[:2]}
    assert body["not_indexed"] == [str(clips[2])]
    assert all(0 <= d["score"] <= 1 and 1 <= len(d["times"]) <= 3 for d in body["data"])
    assert [d["score"] for d in body["data"]] == sorted((d["score"] for d in body["data"]), reverse=True)
    bad = httpx.post(server.url + "/v1/search", json={"query": "", "videos": [clips[0].as_uri()]})
    assert bad.status_code == 400
    bad = httpx.post(server.url + "/v1/search", json={"query": "x", "videos": ["file:///etc/passwd"]})
    assert bad.status_code == 403
