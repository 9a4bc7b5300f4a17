"""The OpenAI-compatible HTTP API over an ``Engine`` (FastAPI on uvicorn).

Routes: ``POST /v1/chat/completions`` (``stream: true`` for server-sent events), ``GET /v1/models``,
``POST /v1/search``, and ``GET /health`` (200 ``{"status": "ready"}`` once the engine is warm, 503
``{"status": "starting"}`` before). With ``api_key`` every ``/v1`` route wants
``Authorization: Bearer KEY`` (401 otherwise). Bodies over ``max_body_bytes`` get 413.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``) with their status:
400 bad request (malformed JSON, bad fields, a question too long for the context), 401, 403 (a file
outside the allowed roots), 404 (a missing file, an unknown route), 413, 422 (an unreadable video),
500 (anything unexpected; the server keeps serving). A streamed answer that fails after its first
token ends with an ``error`` event and ``[DONE]``.

Non-standard response fields: ``vidqa`` in a completion (frames and their times, whether the frames
came from a cache, timings, notes), and in the last chunk of a stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vidqa.serve.engine import Answer, Cancelled, Engine, Prepared, status_of
from vidqa.serve.schema import ChatRequest, Limits, RequestError, parse_chat, parse_search

_DONE = object()
_FIRST = object()  # the first token is out (its text may come later)


def error_response(e: BaseException) -> JSONResponse:
    err = status_of(e)
    return JSONResponse(err.body(), status_code=err.status)


async def read_json(request: Request, limit: int) -> dict:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise RequestError(413, f"the request body is over {limit} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body is over {limit} bytes", code="request_too_large")
    try:
        obj = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "the request body is not valid JSON", code="invalid_json")
    if not isinstance(obj, dict):
        raise RequestError(400, "the request body must be a JSON object", code="invalid_json")
    return obj


def vidqa_fields(prep: Prepared, ans: Answer | None) -> dict:
    cache = prep.cache
    indices = cache.meta.get("frame_indices") or [None] * cache.num_frames
    out = {"frames": [{"index": i, "time": round(float(t), 3)} for i, t in zip(indices, cache.timestamps)],
           "from_cache": prep.from_cache, "notes": prep.notes, "frames_s": round(prep.frames_s, 4)}
    if ans is not None:
        s = ans.stats
        sp = ans.split  # the server's time to first token, split: copy + prefill + first token
        out.update({"answer_frames": ans.frames, "dropped_turns": ans.history_dropped,
                    "time_to_first_token_s": round(sp.total_s, 4), "copy_s": round(sp.copy_s, 4),
                    "prefill_s": round(sp.prefill_s, 4), "first_token_s": round(sp.first_token_s, 4),
                    "frames_on": sp.frames_on, "ms_per_token": round(s.ms_per_token, 3),
                    "answer_tokens": s.tokens, "stopped": s.stopped})
    return out


def usage(engine: Engine, req: ChatRequest, ans: Answer) -> dict:
    prompt = len(engine.qa.method.prompt_ids(req.question, req.history)) + ans.frames * engine.qa.method.tokens_per_frame
    return {"prompt_tokens": prompt, "completion_tokens": ans.stats.tokens, "total_tokens": prompt + ans.stats.tokens}


def finish_reason(ans: Answer) -> str:
    return "stop" if ans.stats.stopped == "stop" else "length"


def create_app(engine: Engine, *, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="vidqa", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        return error_response(e)

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return JSONResponse(RequestError(404, f"no route {request.method} {request.url.path}", type="not_found_error",
                                         code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return JSONResponse(RequestError(405, f"{request.method} is not allowed on {request.url.path}").body(),
                            status_code=405)

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise RequestError(401, "a valid API key is needed (Authorization: Bearer KEY)", type="authentication_error",
                               code="invalid_api_key")

    def not_ready() -> None:
        if not engine.ready:
            raise RequestError(503, "the model is still warming up; retry when /health says ready",
                               type="server_error", code="not_ready")

    async def in_lane(lane, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(lane, fn, *args)

    async def prepared(req: ChatRequest) -> Prepared:
        video = engine.check_path(req.video)
        prep = await in_lane(engine.lane_lookup, engine.lookup, video, req)
        if prep.cache is None:
            prep = await in_lane(engine.lane_compress, engine.compute, prep, req)
        return prep

    @app.get("/health")
    async def health():
        if engine.ready:
            return {"status": "ready", "model": engine.model_id, "warmup_s": engine.warmup_s,
                    "memory_cache": engine.memory.stats()}
        return JSONResponse({"status": "starting"}, status_code=503)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            authorise(request)
        except RequestError as e:
            return error_response(e)
        return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": int(engine.started),
                                            "owned_by": "vidqa"}]}

    @app.post("/v1/search")
    async def search(request: Request):
        try:
            authorise(request)
            not_ready()
            req = parse_search(await read_json(request, max_body_bytes), limits)
            return JSONResponse(await in_lane(engine.lane_answer, engine.search, req))
        except Exception as e:
            return error_response(e)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            authorise(request)
            not_ready()
            req = parse_chat(await read_json(request, max_body_bytes), limits)
            prep = await prepared(req)
        except Exception as e:
            return error_response(e)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def job():
            try:
                ans = engine.answer(prep, req, emit=put, cancel=cancel, on_first=lambda: put(_FIRST))
            except BaseException as e:  # noqa: BLE001 (handed to the request, which answers with it)
                put(e)
            else:
                put((_DONE, ans))

        future = loop.run_in_executor(engine.lane_answer, job)

        if not req.stream:
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        return error_response(item)
                    if isinstance(item, tuple):
                        ans = item[1]
                        break
            except asyncio.CancelledError:
                cancel.set()
                raise
            await future
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": engine.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                             "finish_reason": finish_reason(ans), "logprobs": None}],
                "usage": usage(engine, req, ans), "vidqa": vidqa_fields(prep, ans)})

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        # wait for the first token (or the error) before answering, so that a failed prefill gets its status;
        # the role chunk goes out with the first token, so a client's time to first chunk is the time to it
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            cancel.set()
            raise
        if isinstance(first, BaseException):
            return error_response(first)

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                item = first if first is not _FIRST else await queue.get()
                while True:
                    if item is _FIRST:
                        item = await queue.get()
                        continue
                    if isinstance(item, BaseException):
                        if not isinstance(item, Cancelled):
                            yield f"data: {json.dumps(status_of(item).body())}\n\n"
                        break
                    if isinstance(item, tuple):
                        ans = item[1]
                        extra = {"vidqa": vidqa_fields(prep, ans)}
                        yield chunk({}, finish_reason(ans), **extra)
                        if req.include_usage:
                            yield (f"data: {json.dumps({'id': rid, 'object': 'chat.completion.chunk', 'created': created, 'model': engine.model_id, 'choices': [], 'usage': usage(engine, req, ans)})}\n\n")
                        break
                    yield chunk({"content": item})
                    item = await queue.get()
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # a client that went away frees the answer lane at the next token

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app

