"""Request bodies of the OpenAI-compatible API, parsed and checked into plain dataclasses.

Chat completions take OpenAI's fields (``messages``, ``stream``, ``max_tokens`` or
``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``) and vidqa's own as extra body fields
(``fps``, ``num_frames``, ``max_frames``, ``start``, ``end``; ``chat: true`` fits the frames as
``vidqa chat`` does). A message's content is a string or a list of parts, the way vLLM accepts video:
``{"type": "text", "text": ...}``, ``{"type": "video_url", "video_url": {"url": "file:///..."}}``,
``{"type": "image_url", "image_url": {"url": "file:///..."}}``. Exactly one video or image per request.
The last message is the user's question; earlier user/assistant pairs are the history.

Every problem is a ``RequestError`` carrying its HTTP status and OpenAI's error type and code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from vidqa.errors import VidqaError


class RequestError(VidqaError):
    """A request the server refuses: an HTTP status and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    max_question_chars: int = 8000  # the question and every history message together
    max_messages: int = 256
    max_tokens: int = 4096
    max_videos: int = 1000  # per search request


@dataclass
class SamplingFields:
    fps: float = 1.0
    num_frames: int | None = None
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None

    def sampling(self):
        from vidqa.video import Sampling

        return Sampling(fps=self.fps, num_frames=self.num_frames, max_frames=self.max_frames, start=self.start,
                        end=self.end)


@dataclass
class ChatRequest:
    video: str  # a file path (from a file:// URL)
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)
    stream: bool = False
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    frames: SamplingFields = field(default_factory=SamplingFields)
    chat: bool = False  # fit frames and history as `vidqa chat` does
    model: str | None = None
    include_usage: bool = False


@dataclass
class SearchRequest:
    query: str
    videos: list[str]
    top_k: int = 5
    template: str | None = None
    evidence: int = 3
    frames: SamplingFields = field(default_factory=SamplingFields)


def _number(body: dict, name: str, default, *, kind=float, lo=None, hi=None, optional=False):
    v = body.get(name, default)
    if v is None:
        if optional:
            return None
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise bad(f"'{name}' must be {'an integer' if kind is int else 'a number'}", name)
    if isinstance(v, float) and not math.isfinite(v):
        raise bad(f"'{name}' must be finite", name)
    v = kind(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad(f"'{name}' must be between {lo} and {hi}" if hi is not None else f"'{name}' must be at least {lo}", name)
    return v


def sampling_fields(body: dict) -> SamplingFields:
    f = SamplingFields(fps=_number(body, "fps", 1.0, lo=1e-6, hi=1000.0),
                       num_frames=_number(body, "num_frames", None, kind=int, lo=1, hi=100000, optional=True),
                       max_frames=_number(body, "max_frames", None, kind=int, lo=1, hi=100000, optional=True),
                       start=_number(body, "start", None, lo=0.0, optional=True),
                       end=_number(body, "end", None, lo=0.0, optional=True))
    if f.start is not None and f.end is not None and f.end <= f.start:
        raise bad("'end' must be after 'start'", "end")
    return f


def file_path(url: Any, param: str) -> str:
    """The local path of a ``file://`` URL (or of a plain absolute path)."""
    if not isinstance(url, str) or not url:
        raise bad("a video or image URL must be a non-empty string", param)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise bad("file:// URLs must name a local file (file:///path)", param)
        path = unquote(parsed.path)
    elif parsed.scheme == "" and url.startswith("/"):
        path = url
    else:
        raise bad(f"only file:// URLs are supported, not {parsed.scheme or url[:20]!r}", param, "unsupported_url")
    if "\x00" in path:
        raise bad("the file path contains a NUL byte", param)
    return path


def _parts(content: Any, i: int) -> tuple[str, list[str]]:
    """A message's text and the paths of its videos and images."""
    if isinstance(content, str):
        return content, []
    if content is None:
        return "", []
    if not isinstance(content, list):
        raise bad(f"messages[{i}].content must be a string or a list of parts", f"messages[{i}].content")
    texts, media = [], []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad(f"{where} must be an object with a 'type'", where)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}.text must be a string", where)
            texts.append(part["text"])
        elif kind in ("video_url", "image_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            media.append(file_path(url, where))
        else:
            raise bad(f"{where}: unsupported content part type {kind!r} (use text, video_url, image_url)", where)
    return " ".join(t.strip() for t in texts if t.strip()), media


def parse_chat(body: dict, limits: Limits = Limits()) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    if len(messages) > limits.max_messages:
        raise bad(f"at most {limits.max_messages} messages", "messages")
    turns: list[tuple[str, str]] = []
    media: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise bad(f"messages[{i}] must be an object with role system, user or assistant", f"messages[{i}]")
        text, found = _parts(m.get("content"), i)
        media += found
        if m["role"] in ("user", "assistant"):
            turns.append((m["role"], text))
    if not media:
        raise bad("no video: add a content part {\"type\": \"video_url\", \"video_url\": {\"url\": \"file:///...\"}}",
                  "messages")
    if len(media) > 1:
        raise bad("one video or image per request", "messages")
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise bad("the last message must be the user's question, with text", "messages")
    history, pending = [], None
    for role, text in turns[:-1]:
        if role == "user":
            pending = text
        elif pending is not None:
            history.append((pending, text))
            pending = None
    question = turns[-1][1]  # as sent: `vidqa ask` asks its question unchanged
    if len(question) + sum(len(q) + len(a) for q, a in history) > limits.max_question_chars:
        raise bad(f"the question and history are too long (over {limits.max_question_chars} characters)", "messages",
                  "context_length_exceeded")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = 256 if max_tokens is None else _number({"max_tokens": max_tokens}, "max_tokens", 256, kind=int, lo=1,
                                                        hi=limits.max_tokens)
    n = body.get("n", 1)
    if n != 1:
        raise bad("only n=1 is supported", "n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    opts = body.get("stream_options") or {}
    return ChatRequest(
        video=media[0], question=question, history=history, stream=stream, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, lo=0.0, hi=10.0),
        top_p=_number(body, "top_p", 1.0, lo=0.0, hi=1.0),
        seed=_number(body, "seed", None, kind=int, optional=True),
        frames=sampling_fields(body), chat=bool(body.get("chat", False)), model=model,
        include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")))


def parse_search(body: dict, limits: Limits = Limits()) -> SearchRequest:
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad("'query' must be a non-empty string", "query")
    if len(query) > limits.max_question_chars:
        raise bad("the query is too long", "query", "context_length_exceeded")
    videos = body.get("videos")
    if not isinstance(videos, list) or not videos:
        raise bad("'videos' must be a non-empty list of file:// URLs or paths", "videos")
    if len(videos) > limits.max_videos:
        raise bad(f"at most {limits.max_videos} videos per search", "videos")
    template = body.get("template")
    if template is not None and (not isinstance(template, str) or "{query}" not in template):
        raise bad("'template' must be a string containing {query}", "template")
    return SearchRequest(query=query, videos=[file_path(v, f"videos[{i}]") for i, v in enumerate(videos)],
                         top_k=_number(body, "top_k", 5, kind=int, lo=1, hi=limits.max_videos),
                         template=template, evidence=_number(body, "evidence", 3, kind=int, lo=0, hi=64),
                         frames=sampling_fields(body))
