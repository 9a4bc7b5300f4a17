"""The files of a bench run's folder: predictions (JSON lines, resumable), ``run.json``, atomic JSON.

Outputs (``--out DIR``, default ``vidqa-bench/<dataset>-<split>-<model name>``)
-------------------------------------------------------------------------------
::

    DIR/run.json                          settings of the run; a rerun with other settings is refused
    DIR/predictions.jsonl                 one line per question (unsharded run)
    DIR/predictions.part-I-of-N.jsonl     the same, one file per shard (--shard I/N, torchrun rank I)
    DIR/predictions.part-I-of-N.done      written when a shard finishes (torchrun: rank 0 waits for all)
    DIR/report.json                       the combined report (end of an unsharded run, or --merge)
    DIR/judge.<judge model>.jsonl         the judge's verdict per question (with --judge-model)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any

from vidqa.errors import VidqaError


def part_name(shard: tuple[int, int] | None) -> str:
    return "predictions.jsonl" if shard is None else f"predictions.part-{shard[0]}-of-{shard[1]}.jsonl"


def read_records(path: Path) -> list[dict]:
    """The complete lines of a JSONL file; a torn last line (or any unparseable line) is skipped."""
    records = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            records.append(rec)
    return records


def repair_tail(path: Path) -> bool:
    """Cut a torn last line (no newline, or not JSON) off a JSONL file; True if something was cut."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if not data:
                return False
            end = len(data)
            if data.endswith(b"\n"):
                start = data.rfind(b"\n", 0, end - 1) + 1
                try:
                    json.loads(data[start:end])
                    return False
                except ValueError:
                    pass  # a complete-looking last line that is not JSON (a torn write filled with zeros)
                cut = start
            else:
                cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            return True
    except FileNotFoundError:
        return False


class PredictionWriter:
    """Appends one JSON line per question, flushed at once; an flock keeps two runs off one file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a+b")
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise VidqaError(f"another vidqa bench is writing {path}; wait for it or use another --out")
        self.torn = repair_tail(path)
        self.f.seek(0, os.SEEK_END)

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self.f.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self.f.fileno())
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# The settings that change answers: a rerun into the same folder must agree on them.
RESUME_KEYS = ("dataset", "split", "model_fingerprint", "method", "tokens_per_frame", "dtype", "prompt",
               "max_new_tokens", "sampling")


def check_run_settings(out: Path, settings: dict) -> None:
    """Write ``run.json``, or check that the one there agrees on everything that changes answers."""
    path = out / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            diff = [k for k in RESUME_KEYS if _canon(old.get(k)) != _canon(settings.get(k))]
            if diff:
                raise VidqaError(f"{out} holds predictions made with another {', '.join(diff)} "
                                 f"({_short(old.get(diff[0]))} there, {_short(settings.get(diff[0]))} now); "
                                 "pass another --out or remove it")
            return
    write_json_atomic(path, settings)


def _canon(v: Any) -> str:
    def fold(x):
        if isinstance(x, float) and x.is_integer():
            return int(x)
        if isinstance(x, dict):
            return {k: fold(y) for k, y in x.items()}
        if isinstance(x, (list, tuple)):
            return [fold(y) for y in x]
        return x

    return json.dumps(fold(v), sort_keys=True, default=str)


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def read_settings(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}

