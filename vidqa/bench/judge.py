"""The optional GPT judge: the Video-ChatGPT protocol over an OpenAI-compatible endpoint, cached on disk.

The protocol is Video-ChatGPT's (``quantitative_evaluation/evaluate_activitynet_qa.py``), asked of any
OpenAI-compatible ``/chat/completions``: its system and user prompts, a reply parsed as
``{'pred': 'yes'|'no', 'score': 0..5}``; accuracy = yes / (yes + no), score = mean of ``int(score)``
(the protocol's script truncates). Requests use temperature 0. Replies are cached on disk, keyed by
judge model, question, gold answer and prediction, under ``<cache store>/judge/``.

Bounds: each request waits ``timeout`` seconds (``--judge-timeout``, default 60) for the reply; a request
that gets none is not retried, and from then on every other question fails at once (one ``error:`` line,
not minutes of retries against a dead server). Refusals that ask for a retry (HTTP 408, 409, 429, 5xx),
dropped connections and unreadable replies are retried up to ``attempts`` times, waiting the server's
``Retry-After`` (seconds or an HTTP date) when it gives one, else 1, 2, 4 ... s, each wait at most
``MAX_RETRY_WAIT`` and all of one question's waits together at most ``retry_budget`` seconds.
"""

from __future__ import annotations

import ast
import concurrent.futures
import email.utils
import hashlib
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from vidqa.bench.files import write_json_atomic
from vidqa.errors import VidqaError
from vidqa.options import judge_key

DEFAULT_JUDGE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 60.0  # seconds a request may wait for its reply
MAX_RETRY_WAIT = 60.0  # the longest single wait before a retry, whatever Retry-After asks
DEFAULT_RETRY_BUDGET = 120.0  # all waits before retries of one question, together
JUDGE_PROTOCOL = "video-chatgpt"

# The protocol's prompts, verbatim (Video-ChatGPT, quantitative_evaluation/evaluate_activitynet_qa.py): the
# judge's numbers move with the wording, so it must not be paraphrased.
JUDGE_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine "
    "if they match meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the "
    "meaningful match between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases "
    "as valid matches.\n- Evaluate the correctness of the prediction compared to the answer."
)
JUDGE_USER = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\n"
    "Correct Answer: {answer}\nPredicted Answer: {prediction}\n\nProvide your evaluation only as a yes/no and "
    "score where the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', where "
    "value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE "
    "ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. For example, your response "
    "should look like this: {{'pred': 'yes', 'score': 4.8}}."
)


class JudgeError(VidqaError):
    """The judge endpoint cannot be used (refused, unreachable, misconfigured)."""


def judge_messages(question: str, answer: str, prediction: str) -> list[dict]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(question=question, answer=answer, prediction=prediction)}]


def _verdict(d: dict) -> dict | None:
    d = {str(k).strip().strip("'\"").lower(): v for k, v in d.items()}
    pred = str(d.get("pred", "")).strip().strip("'\"").lower()
    pred = "yes" if pred.startswith("yes") else "no" if pred.startswith("no") else None
    try:
        value = float(str(d.get("score")).strip().strip("'\""))
    except (TypeError, ValueError):
        return None
    if pred is None or not math.isfinite(value):
        return None
    return {"pred": pred, "score": min(5.0, max(0.0, value))}


def parse_judgement(text: str) -> dict | None:
    """``{'pred': 'yes'|'no', 'score': float in [0, 5]}`` from a judge's reply, or None.

    Accepts the Python dict the protocol asks for, JSON, either inside code fences or surrounded by
    prose, keys in any case, the score as a number or a string; failing those, ``pred: yes ...
    score: 4`` anywhere in the text.
    """
    if not isinstance(text, str):
        return None
    for chunk in re.findall(r"\{[^{}]*\}", text):
        for load in (ast.literal_eval, json.loads):
            try:
                value = load(chunk)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict) and (v := _verdict(value)):
                return v
    pred = re.search(r"pred\w*['\"]?\s*[:=]\s*['\"]?\s*(yes|no)\b", text, re.I)
    value = re.search(r"score['\"]?\s*[:=]\s*['\"]?\s*(\d+(?:\.\d+)?)", text, re.I)
    if pred and value:
        return _verdict({"pred": pred[1], "score": value[1]})
    return None


class Judge:
    """Asks an OpenAI-compatible chat endpoint for the protocol's verdict; caches every verdict on disk."""

    def __init__(self, model: str, url: str | None = None, *, key: str | None = None, cache_dir: Path,
                 timeout: float = DEFAULT_TIMEOUT, attempts: int = 4, retry_budget: float = DEFAULT_RETRY_BUDGET,
                 sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time):
        if not (math.isfinite(timeout) and timeout > 0):
            raise JudgeError(f"--judge-timeout must be a positive number of seconds, not {timeout}", exit_code=2)
        self.model = model
        self.url = (url or DEFAULT_JUDGE_URL).rstrip("/")
        self.endpoint = self.url if self.url.endswith("/chat/completions") else self.url + "/chat/completions"
        self.key = key if key is not None else judge_key()
        host = urllib.parse.urlsplit(self.endpoint).hostname or ""
        if urllib.parse.urlsplit(self.endpoint).scheme not in ("http", "https") or not host:
            raise JudgeError(f"--judge-url must be an http(s) URL, not {url!r}", exit_code=2)
        if not self.key and host == "api.openai.com":
            raise JudgeError("the judge needs an API key: set OPENAI_API_KEY or VIDQA_JUDGE_KEY")
        local = host in ("127.0.0.1", "localhost", "::1")
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}) if local
                                                  else urllib.request.ProxyHandler())
        self.cache_dir = Path(cache_dir)
        self.timeout, self.attempts, self.sleep, self.now = timeout, max(1, attempts), sleep, now
        self.retry_budget = retry_budget
        self.dead: str | None = None  # set when a request got no reply: every later question fails at once
        self.requests = 0
        self.cache_hits = 0
        self._count = threading.Lock()  # requests are sent from a thread pool

    def cache_key(self, question: str, answer: str, prediction: str) -> str:
        blob = json.dumps([JUDGE_PROTOCOL, self.model, question, answer, prediction], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def cached(self, question: str, answer: str, prediction: str) -> dict | None:
        try:
            value = json.loads(self._cache_path(self.cache_key(question, answer, prediction)).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) and value.get("pred") in ("yes", "no") else None

    def __call__(self, question: str, answer: str, prediction: str) -> dict:
        """``{"pred", "score", "raw", "cached"}``, or ``{"error": ...}`` when no reply could be parsed."""
        hit = self.cached(question, answer, prediction)
        if hit is not None:
            with self._count:
                self.cache_hits += 1
            return {**hit, "cached": True}
        body = {"model": self.model, "messages": judge_messages(question, answer, prediction), "temperature": 0}
        problem, wait, waited = "", 0.0, 0.0
        for attempt in range(self.attempts):
            if self.dead:
                raise JudgeError(self.dead)
            if attempt:
                if waited + wait > self.retry_budget:
                    problem += f"; the next retry would wait {wait:.0f} s, past the {self.retry_budget:.0f} s budget"
                    break
                self.sleep(wait)
                waited += wait
            try:
                raw = self._post(body)
            except _Retry as e:
                problem = str(e)
                wait = e.after if e.after is not None else min(MAX_RETRY_WAIT, 2.0 ** attempt)
                continue
            wait = min(MAX_RETRY_WAIT, 2.0 ** attempt)
            verdict = parse_judgement(raw)
            if verdict is None:
                problem = f"unparseable reply {raw[:80]!r}"
                continue
            value = {**verdict, "raw": raw, "model": self.model}
            path = self._cache_path(self.cache_key(question, answer, prediction))
            write_json_atomic(path, value)
            return {**value, "cached": False}
        if problem.startswith("unparseable"):
            return {"error": problem}
        raise JudgeError(f"the judge at {self.endpoint} did not answer after {attempt + 1} tries: {problem}")

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        with self._count:
            self.requests += 1
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                data = json.loads(r.read().decode("utf-8", errors="replace"))
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", errors="replace").replace("\n", " ") if e.fp else ""
            if e.code in (408, 409, 429) or e.code >= 500:
                raise _Retry(f"HTTP {e.code}", after=retry_after(e.headers.get("Retry-After"), self.now()))
            raise JudgeError(f"the judge at {self.endpoint} refused: HTTP {e.code} {detail[:160]}; "
                             "check --judge-url, --judge-model and the key (OPENAI_API_KEY or VIDQA_JUDGE_KEY)")
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(e, (TimeoutError, socket.timeout)) or isinstance(reason, (TimeoutError, socket.timeout)):
                self.dead = (f"the judge at {self.endpoint} did not answer within {self.timeout:g} s "
                             "(--judge-timeout); judging stopped")
                raise JudgeError(self.dead) from None
            raise _Retry(f"{type(e).__name__}: {reason}")
        except ValueError:
            raise _Retry("the reply is not JSON")
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise _Retry(f"no choices[0].message.content in the reply: {str(data)[:80]}")


class _Retry(Exception):
    def __init__(self, message: str, after: float | None = None):
        super().__init__(message)
        self.after = after  # seconds the server asked to wait (Retry-After), capped


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), capped at
    ``MAX_RETRY_WAIT``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_WAIT, max(0.0, seconds))


def judge_records(judge: Judge, records: list[dict], workers: int = 8,
                  on_done: Callable[[], None] | None = None) -> dict[str, dict]:
    """The judge's verdict for each answered record, by id: cache first, then the endpoint in parallel."""
    verdicts: dict[str, dict] = {}
    todo = []
    for r in records:
        hit = judge.cached(r["question"], r["answer"], r["prediction"])
        if hit is not None:
            judge.cache_hits += 1
            verdicts[r["id"]] = {**hit, "cached": True}
            if on_done:
                on_done()
        else:
            todo.append(r)
    if todo:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers),
                                                   thread_name_prefix="vidqa-judge") as pool:
            futures = {pool.submit(judge, r["question"], r["answer"], r["prediction"]): r["id"] for r in todo}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    verdicts[futures[fut]] = fut.result()
                    if on_done:
                        on_done()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return verdicts

