"""`vidqa.bench.judge`: reply parsing, the protocol's prompts, a fake OpenAI-compatible server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vidqa import bench as B
from bench_fixtures import (QA, fake_answers, lines, msrvtt_dir, run, shared_model,
                            video)  # noqa: F401 (fixtures)


@pytest.mark.parametrize("reply,pred,score", [
    ("{'pred': 'yes', 'score': 4}", "yes", 4.0),
    ('{"pred": "no", "score": 0}', "no", 0.0),
    ("```python\n{'pred': 'yes', 'score': 4.8}\n```", "yes", 4.8),
    ("Sure! Here it is: {'pred': 'Yes', 'score': '3'} Hope that helps.", "yes", 3.0),
    ("{'PRED': 'no.', 'Score': 1}", "no", 1.0),
    ("pred: yes, score: 5", "yes", 5.0),
    ("{'pred': 'yes', 'score': 7}", "yes", 5.0),  # clamped to the scale
])
def test_parse_judgement(reply, pred, score):
    assert B.parse_judgement(reply) == {"pred": pred, "score": score}


@pytest.mark.parametrize("reply", ["", "I cannot judge this.", "{'pred': 'maybe', 'score': 3}", "{'pred': 'yes'}",
                                   "{'pred': 'yes', 'score': 'high'}"])
def test_parse_judgement_refuses_what_it_cannot_read(reply):
    assert B.parse_judgement(reply) is None


def test_judge_prompt_is_the_protocols():
    system, user = B.judge_messages("what?", "dog", "a dog")
    assert system["role"] == "system" and "intelligent chatbot designed for evaluating the correctness" in system["content"]
    assert "Question: what?\nCorrect Answer: dog\nPredicted Answer: a dog\n\n" in user["content"]
    assert "Python dictionary string with keys 'pred' and 'score'" in user["content"]
    assert user["content"].endswith("{'pred': 'yes', 'score': 4.8}.")



# ------------------------------------------------------------------------------------------------
# the judge, against a fake OpenAI-compatible server on 127.0.0.1


class FakeJudge:
    """Answers chat completions like a judge: 'yes' when the prediction contains the gold answer.

    Replies vary in form (python dict, JSON in a code fence, prose around a dict) to exercise parsing.
    It refuses to serve more than ``max_requests``.
    """

    def __init__(self, max_requests: int = 50):
        self.requests: list[dict] = []
        self.max_requests = max_requests
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    n = len(judge.requests)
                if n > judge.max_requests:
                    self.send_response(500)
                    self.end_headers()
                    return
                user = body["messages"][1]["content"]
                gold = user.split("Correct Answer: ")[1].split("\n")[0]
                pred = user.split("Predicted Answer: ")[1].split("\n")[0]
                yes = B.contains(pred, gold)
                forms = ["{'pred': '%s', 'score': %d}", '```json\n{"pred": "%s", "score": %d}\n```',
                         "Evaluation: {'pred': '%s', 'score': %d}."]
                content = forms[n % 3] % ("yes" if yes else "no", 4 if yes else 1)
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_judge_with_a_local_fake_server(capsys, tmp_path, shared_model, fake_answers, monkeypatch):
    monkeypatch.setenv("VIDQA_JUDGE_KEY", "test-key")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = msrvtt_dir(tmp_path / "d")
    out = tmp_path / "o"
    with FakeJudge(max_requests=len(QA) + 2) as server:
        judge = ["--judge-model", "fake-judge-1", "--judge-url", server.url]
        code, stdout, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--model", "x", "--json", *judge)
        assert code == 0, err
        report = json.loads(stdout)
        j = report["judge"]
        assert j["model"] == "fake-judge-1" and j["protocol"] == "video-chatgpt" and j["url"] == server.url
        assert (j["yes"], j["no"], j["failed"]) == (5, 2, 0)  # the 'contains' answers
        assert j["accuracy"] == round(5 / 7, 6) and j["score"] == round((5 * 4 + 2 * 1) / 7, 4)
        assert j["requests"] == 7 and j["cache_hits"] == 0
        assert len(server.requests) == 7
        req = server.requests[0]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer test-key"
        assert req["model"] == "fake-judge-1" and req["temperature"] == 0
        assert req["messages"][0]["content"] == B.JUDGE_SYSTEM
        assert report["per_category"]["who"]["judge_accuracy"] == 0.5
        verdicts = lines(out / "judge.fake-judge-1.jsonl")
        assert len(verdicts) == 7 and {v["judge_model"] for v in verdicts} == {"fake-judge-1"}

        # a rerun (and a --merge) costs nothing: every verdict comes from the disk cache
        code, stdout, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--model", "x", "--json", *judge)
        assert code == 0, err
        code, stdout2, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--merge", "--json", *judge)
        assert code == 0, err
        assert len(server.requests) == 7
        for s in (stdout, stdout2):
            again = json.loads(s)["judge"]
            assert again["cache_hits"] == 7 and again["requests"] == 0 and again["accuracy"] == j["accuracy"]

        # another judge model is another cache key: it is asked again
        code, stdout, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--merge", "--json",
                                "--judge-model", "fake-judge-2", "--judge-url", server.url, "--limit", "2")
        assert code == 0, err
        assert json.loads(stdout)["judge"]["model"] == "fake-judge-2" and len(server.requests) == 9


def test_judge_retries_and_refusals(tmp_path):
    replies = iter(["not a verdict", "{'pred': 'no', 'score': 2}"])

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/denied"):
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b'{"error": "bad key"}')
                return
            data = json.dumps({"choices": [{"message": {"content": next(replies)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        judge = B.Judge("m", base + "/v1", key="k", cache_dir=tmp_path / "j", sleep=lambda s: None)
        assert judge("q?", "a", "b") == {"pred": "no", "score": 2.0, "raw": "{'pred': 'no', 'score': 2}",
                                         "model": "m", "cached": False}
        assert judge.requests == 2  # the unparseable reply was asked again
        assert judge("q?", "a", "b")["cached"] is True and judge.requests == 2
        denied = B.Judge("m", base + "/denied", key="k", cache_dir=tmp_path / "j", sleep=lambda s: None)
        with pytest.raises(B.JudgeError, match="HTTP 401"):
            denied("q?", "a", "other")
    finally:
        server.shutdown()
        server.server_close()


def test_judge_needs_a_key_for_openai(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("VIDQA_JUDGE_KEY", raising=False)
    with pytest.raises(B.JudgeError, match="OPENAI_API_KEY"):
        B.Judge("gpt-4o-mini", None, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# bounds: a judge that never answers fails at once and stops the judging; Retry-After is honoured, capped


class Silent:
    """A server that accepts every request and never answers (until it is closed)."""

    def __init__(self):
        self.release = threading.Event()
        self.count = 0
        silent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                silent.count += 1
                silent.release.wait()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_judge_that_never_answers_fails_fast_with_one_line(tmp_path):
    from vidqa.bench.judge import judge_records

    slept = []
    with Silent() as server:
        judge = B.Judge("m", server.url, key="k", cache_dir=tmp_path / "j", timeout=0.2, sleep=slept.append)
        records = [{"id": str(i), "question": f"q{i}?", "answer": "a", "prediction": "b"} for i in range(5)]
        with pytest.raises(B.JudgeError, match=r"did not answer within 0.2 s \(--judge-timeout\)") as e:
            judge_records(judge, records, workers=1)
        assert "\n" not in str(e.value)
        assert judge.requests == 1 and slept == []  # not retried, and the other questions were not sent
        with pytest.raises(B.JudgeError, match="did not answer"):  # later questions fail at once
            judge("another?", "a", "b")
        assert judge.requests == 1


def test_judge_timeout_is_an_option_and_must_be_positive(tmp_path, capsys, monkeypatch):
    with pytest.raises(B.JudgeError) as e:
        B.Judge("m", "http://127.0.0.1:9/v1", key="k", cache_dir=tmp_path, timeout=0)
    assert e.value.exit_code == 2
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0 and "--judge-timeout" in out


def test_bench_against_a_silent_judge_is_one_error_line(capsys, tmp_path, shared_model, fake_answers, monkeypatch):
    monkeypatch.setenv("VIDQA_JUDGE_KEY", "k")
    root = msrvtt_dir(tmp_path / "d")
    with Silent() as server:
        code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x",
                           "--judge-model", "j", "--judge-url", server.url, "--judge-timeout", "0.2")
        assert server.count >= 1
    lines_ = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and lines_[-1].startswith("error: the judge at") and "--judge-timeout" in lines_[-1]
    assert "Traceback" not in err and "internal error" not in err


class Busy:
    """Refuses with 429/503 and a Retry-After header (one per entry of ``waits``), then answers."""

    def __init__(self, waits):
        self.waits = list(waits)
        busy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                if busy.waits:
                    self.send_response(429 if len(busy.waits) % 2 else 503)
                    self.send_header("Retry-After", busy.waits.pop(0))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"content": "{'pred': 'yes', 'score': 5}"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_retry_after_is_honoured_and_capped(tmp_path):
    now = 1_700_000_000.0
    with Busy(["7", "Tue, 14 Nov 2023 22:13:40 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"]) as server:
        slept = []
        judge = B.Judge("m", server.url, key="k", cache_dir=tmp_path, sleep=slept.append, now=lambda: now)
        assert judge("q?", "a", "b")["pred"] == "yes"
        assert slept == [7.0, 20.0, 60.0]  # seconds; an HTTP date 20 s ahead; a far date, capped at 60 s


def test_retries_stop_at_the_overall_bound(tmp_path):
    with Busy(["50"] * 10) as server:
        slept = []
        judge = B.Judge("m", server.url, key="k", cache_dir=tmp_path, sleep=slept.append, attempts=10,
                        retry_budget=120)
        with pytest.raises(B.JudgeError, match="budget") as e:
            judge("q?", "a", "b")
        assert slept == [50.0, 50.0] and judge.requests == 3 and "\n" not in str(e.value)


@pytest.mark.parametrize("value,seconds", [("5", 5.0), ("0", 0.0), ("-3", 0.0), ("1e9", 60.0), ("soon", None),
                                           ("", None), (None, None), ("nan", None),
                                           ("Tue, 14 Nov 2023 22:13:10 GMT", 0.0)])
def test_retry_after_header(value, seconds):
    from vidqa.bench.judge import retry_after

    assert retry_after(value, now=1_700_000_000.0) == seconds
