"""Request parsing: vLLM-style content parts, history, sampling and vidqa fields, and every refusal."""

import pytest

from vidqa.serve.schema import Limits, RequestError, file_path, parse_chat, parse_search


def part(url, kind="video_url"):
    return {"type": kind, kind: {"url": url}}


def req(*content, **extra):
    return {"messages": [{"role": "user", "content": list(content)}], **extra}


def test_video_text_sampling_and_vidqa_fields():
    r = parse_chat(req(part("file:///data/a%20b.mp4"), {"type": "text", "text": "what?"}, max_tokens=9, temperature=0.5,
                       top_p=0.9, seed=3, fps=2, num_frames=8, max_frames=4, start=1, end=3.5, stream=True))
    assert r.video == "/data/a b.mp4" and r.question == "what?" and r.stream
    assert (r.max_tokens, r.temperature, r.top_p, r.seed) == (9, 0.5, 0.9, 3)
    s = r.frames.sampling()
    assert (s.fps, s.num_frames, s.max_frames, s.start, s.end) == (2.0, 8, 4, 1.0, 3.5)
    assert parse_chat(req(part("file:///x.png", "image_url"), {"type": "text", "text": "q"})).video == "/x.png"
    assert parse_chat(req(part("file:///x.mp4"), {"type": "text", "text": "q"}, max_completion_tokens=5)).max_tokens == 5


def test_history_pairs_and_the_last_question():
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [part("file:///v.mp4"), {"type": "text", "text": "one"}]},
                         {"role": "assistant", "content": "red"},
                         {"role": "user", "content": "two"},
                         {"role": "assistant", "content": "blue"},
                         {"role": "user", "content": "three"}]}
    r = parse_chat(body)
    assert r.history == [("one", "red"), ("two", "blue")] and r.question == "three" and r.video == "/v.mp4"


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "no video"}]}, "messages"),
    (req(part("file:///a.mp4"), part("file:///b.mp4"), {"type": "text", "text": "q"}), "messages"),
    (req(part("file:///a.mp4")), "messages"),  # no question
    (req(part("http://host/a.mp4"), {"type": "text", "text": "q"}), "messages[0].content[0]"),
    (req(part("file://host/a.mp4"), {"type": "text", "text": "q"}), "messages[0].content[0]"),
    (req(part("data:video/mp4;base64,AAAA"), {"type": "text", "text": "q"}), "messages[0].content[0]"),
    (req({"type": "audio", "audio": {}}, {"type": "text", "text": "q"}), "messages[0].content[0]"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, max_tokens=0), "max_tokens"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, max_tokens=1.5), "max_tokens"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, temperature=True), "temperature"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, top_p=2), "top_p"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, fps=0), "fps"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, start=3, end=1), "end"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, stream="yes"), "stream"),
    (req(part("file:///a.mp4"), {"type": "text", "text": "q"}, n=2), "n"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
])
def test_refusals_are_400_with_the_field(body, param):
    with pytest.raises(RequestError) as e:
        parse_chat(body)
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_too_long_question():
    with pytest.raises(RequestError) as e:
        parse_chat(req(part("file:///a.mp4"), {"type": "text", "text": "x" * 101}), Limits(max_question_chars=100))
    assert e.value.code == "context_length_exceeded"


def test_file_path():
    assert file_path("file:///a/b%23c.mp4", "p") == "/a/b#c.mp4"
    assert file_path("file://localhost/a.mp4", "p") == "/a.mp4"
    assert file_path("/plain/path.mp4", "p") == "/plain/path.mp4"
    for bad in ("relative.mp4", "", None, "ftp://x/y", "file:///a%00b"):
        with pytest.raises(RequestError):
            file_path(bad, "p")


def test_search_requests():
    r = parse_search({"query": "a red circle", "videos": ["file:///a.mp4", "/b.mp4"], "top_k": 2, "fps": 2})
    assert r.videos == ["/a.mp4", "/b.mp4"] and r.top_k == 2 and r.frames.fps == 2.0 and r.evidence == 3
    for body in ({"videos": ["/a.mp4"]}, {"query": "x"}, {"query": "x", "videos": []},
                 {"query": "x", "videos": ["/a.mp4"], "top_k": 0},
                 {"query": "x", "videos": ["/a.mp4"], "template": "no placeholder"},
                 {"query": "x", "videos": ["/a.mp4"] * 3}):
        with pytest.raises(RequestError):
            parse_search(body, Limits(max_videos=2))
