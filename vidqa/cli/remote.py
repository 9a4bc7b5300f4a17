"""`vidqa ask` and `vidqa chat` against a running `vidqa serve` (``--server URL`` or ``VIDQA_SERVER``).

The video goes as a ``file://`` URL of its absolute path (the server reads it; it must lie under the
server's ``--allow-root``), the sampling and answer options as the request's fields, and the answer
comes back streamed (server-sent events) into the same writers as a local answer, so the output is
the same. ``VIDQA_API_KEY`` is sent as the Bearer key. Errors from the server become one ``error:``
line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from vidqa.cli.writers import err, get_writer, note
from vidqa.errors import VidqaError

SERVER_ENV = "VIDQA_SERVER"
KEY_ENV = "VIDQA_API_KEY"

Server = Annotated[Optional[str], typer.Option(
    "--server", envvar=SERVER_ENV, show_default=False,
    help="Ask a running `vidqa serve` at this URL (e.g. http://127.0.0.1:8000) instead of loading the model here.")]


class RemoteError(VidqaError):
    """The server could not be reached or refused the request."""


def _client(server: str, timeout: float | None = None):
    import httpx

    headers = {"Authorization": f"Bearer {os.environ[KEY_ENV]}"} if os.environ.get(KEY_ENV) else {}
    return httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))


def _raise_for(resp) -> None:
    if resp.status_code < 400:
        return
    try:
        resp.read()
        msg = resp.json()["error"]["message"]
    except Exception:
        msg = (resp.text or "").strip()[:200] or resp.reason_phrase
    raise RemoteError(f"server: {msg} (HTTP {resp.status_code})")


def body(video: str, messages_tail: list[dict], *, fps, num_frames, max_frames, start, end, max_new_tokens,
         temperature, top_p, seed, stream: bool, chat: bool = False) -> dict:
    url = Path(video).expanduser().resolve().as_uri()
    first = {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}]}
    msgs = list(messages_tail)
    head = msgs[0]
    first["content"].append({"type": "text", "text": head["content"]})
    out = {"messages": [first, *msgs[1:]], "stream": stream, "max_tokens": max_new_tokens, "temperature": temperature,
           "top_p": top_p, "fps": fps, "chat": chat}
    for k, v in (("seed", seed), ("num_frames", num_frames), ("max_frames", max_frames), ("start", start), ("end", end)):
        if v is not None:
            out[k] = v
    return out


def stream_answer(server: str, payload: dict, final: dict) -> Iterator[str]:
    """POST a streamed completion; yield the text deltas; ``final`` receives the last chunk's extras."""
    import httpx

    try:
        with _client(server) as client, client.stream("POST", "/v1/chat/completions", json=payload) as resp:
            _raise_for(resp)
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RemoteError(f"server: {chunk['error'].get('message')}")
                if chunk.get("model"):
                    final["model"] = chunk["model"]
                for choice in chunk.get("choices") or []:
                    if choice.get("finish_reason"):
                        final["finish_reason"] = choice["finish_reason"]
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
                if "vidqa" in chunk:
                    final["vidqa"] = chunk["vidqa"]
    except httpx.HTTPError as e:
        raise RemoteError(f"cannot reach the server at {server}: {e}")


def complete(server: str, payload: dict) -> dict:
    import httpx

    try:
        with _client(server) as client:
            resp = client.post("/v1/chat/completions", json={**payload, "stream": False})
            _raise_for(resp)
            return resp.json()
    except httpx.HTTPError as e:
        raise RemoteError(f"cannot reach the server at {server}: {e}")


def ask(server: str, video: str, question: str, *, as_json: bool, **options) -> None:
    """One question, answered by the server, printed as `vidqa ask` prints it."""
    if not Path(video).expanduser().exists():
        from vidqa.errors import VideoError

        raise VideoError(f"no such file: {video}")
    out = get_writer(as_json)
    final: dict = {}
    payload = body(video, [{"role": "user", "content": question}], stream=True, **options)
    if as_json:
        resp = complete(server, payload)
        answer = resp["choices"][0]["message"]["content"].strip()
        final = {"vidqa": resp.get("vidqa", {}), "model": resp.get("model")}
    else:
        answer = out.answer(stream_answer(server, payload, final))
    info = final.get("vidqa", {})
    for n in info.get("notes", []):
        note(n)
    report = {"answer": answer, "video": video, "question": question, "model": final.get("model"),
              "server": server, "frames": info.get("frames", []), "from_cache": info.get("from_cache"),
              "stopped": info.get("stopped"),
              "timings": {"frames_s": info.get("frames_s"), "time_to_first_token_s": info.get("time_to_first_token_s"),
                          "ms_per_token": info.get("ms_per_token"), "answer_tokens": info.get("answer_tokens")}}
    out.result(report)
    if info:
        source = "from a cache" if info.get("from_cache") else "compressed by the server"
        out.summary(f"{len(info.get('frames', []))} frames, {source}, first token "
                    f"{1000 * (info.get('time_to_first_token_s') or 0):.0f} ms, {info.get('ms_per_token') or 0:.1f} ms/token "
                    f"(server {server})")


def chat(server: str, video: str, *, as_json: bool, **options) -> None:
    """`vidqa chat` through the server: the conversation so far goes with every question."""
    if not Path(video).expanduser().exists():
        from vidqa.errors import VideoError

        raise VideoError(f"no such file: {video}")
    out = get_writer(as_json)
    if not as_json:
        err.print(f"[dim]asking {server}; ask away (empty line to end)[/dim]", soft_wrap=True)
    messages: list[dict] = []
    interactive = sys.stdin.isatty()
    turn = 0
    while True:
        if interactive:
            err.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        question = line.strip()
        if not line or not question or question in ("exit", "quit"):
            break
        final: dict = {}
        payload = body(video, [*messages, {"role": "user", "content": question}], stream=True, chat=True, **options)
        answer = out.answer(stream_answer(server, payload, final))
        info = final.get("vidqa", {})
        out.result({"turn": turn, "question": question, "answer": answer, "frames": info.get("answer_frames"),
                    "history_turns": len(messages) // 2, "dropped_turns": info.get("dropped_turns", 0),
                    "from_cache": info.get("from_cache")})
        for _ in range(info.get("dropped_turns", 0) or 0):
            err.print("[dim]note: the oldest turn was dropped to fit the context[/dim]")
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        turn += 1
