"""``vidqa bench``: accuracy and efficiency on MSRVTT-QA, MSVD-QA, ActivityNet-QA and synthetic sets.

Every QA pair is answered from the compressed per-frame caches: each video is compressed once (or
found in the cache store, e.g. after ``vidqa index``) and serves all its questions.

Annotation formats (detected, any dataset; ``SPLIT`` is ``test`` or ``val``)
------------------------------------------------------------------------------
1. ``SPLIT_qa.json``: a list of ``{"question", "answer", "id", "video_id", "category_id"}``; ``video_id``
   is an int (7010) or a name (``video7010``). MSRVTT-QA and MSVD-QA (Xu et al. 2017); synthetic sets.
2. ``SPLIT_q.json`` ``{"video_name", "question", "question_id"}`` + ``SPLIT_a.json`` ``{"answer",
   "question_id"}`` (optionally ``"type"``): the Video-ChatGPT / Video-LLaVA / LLaVA-Mini form, and
   ActivityNet-QA's own release. Answers are joined on ``question_id`` (on position when ids are absent).
3. A CSV (``SPLIT.csv``, ``SPLIT_qa.csv``, ... any CSV whose name has the split as a word) with
   ``video_name``, ``question``, ``answer``, ``question_id`` columns (``video_id``/``id``/``category_id``/
   ``type`` are accepted too).

They are looked for in the data folder and its subfolders (two levels down); the shallowest wins, and
format 1 is preferred over 2 over 3 when several are present.

Videos are found by name anywhere under the data folder (four levels down): the annotation's name as
is, with or without a ``video``/``vid`` prefix for numbers (``7010`` = ``video7010``), with or without
ActivityNet's ``v_`` prefix, through MSVD's ``youtube_mapping.txt`` (``vid1201`` -> its YouTube clip
name), with any video extension. When several files match, the one in the data folder itself wins,
then ``videos/all/``, ``videos/``, ``video/``, ``all/``, ``YouTubeClips/``, ``TestVideo/``, ``test/``,
``val/``, then any other folder; and ``.mp4`` before ``.mkv``, ``.webm``, ``.avi``, then the rest.

Metrics (judge-free, reproducible)
----------------------------------
``normalize(text)``, in this order:

1. Unicode NFKC, then lowercase.
2. Apostrophes (``'`` U+2018 U+2019 U+02BC ````` U+00B4) are deleted: ``man's`` -> ``mans``.
3. Every other punctuation character (Unicode category ``P*``: ``. , ? ! : ; - _ " ( ) [ ] / ...``)
   becomes a space: ``t-shirt`` -> ``t shirt``. Symbols (``$ + =``) and digits stay.
4. Split on whitespace, drop the words ``a``, ``an``, ``the``, and join with single spaces.

``exact_match``: ``normalize(prediction) == normalize(gold)``. ``contains``: the normalised gold answer
occurs in the normalised prediction as a whole-word sequence (``" " + gold + " "`` is a substring of
``" " + prediction + " "``). A gold answer that normalises to the empty string matches nothing.
Accuracies are over the answered questions; missing or unreadable videos are counted, not scored.

Judge (optional): the Video-ChatGPT protocol (``quantitative_evaluation/evaluate_activitynet_qa.py``)
against any OpenAI-compatible ``/chat/completions``: its system and user prompts, a reply parsed as
``{'pred': 'yes'|'no', 'score': 0..5}``; accuracy = yes / (yes + no), score = mean of ``int(score)``
(the protocol's script truncates). Requests use temperature 0. Replies are cached on disk, keyed by
judge model, question, gold answer and prediction, under ``<cache store>/judge/``.

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

import ast
import concurrent.futures
import contextlib
import csv
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from vidqa.errors import ContextError, VidqaError

DATASETS = ("msrvtt", "msvd", "activitynet", "synthetic")
SPLITS = ("test", "val")
DEFAULT_PROMPT = "{question}\nAnswer the question using a single word or phrase."
DEFAULT_JUDGE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_NEW_TOKENS = 32
JUDGE_PROTOCOL = "video-chatgpt"

# ----------------------------------------------------------------------------------------------------
# Metrics

ARTICLES = frozenset({"a", "an", "the"})
APOSTROPHES = frozenset("'\u2018\u2019\u02bc`\u00b4")


def normalize(text: Any) -> str:
    """The answer normalisation rule (module docstring): NFKC + lowercase, apostrophes deleted, other
    punctuation to spaces, articles dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", "" if text is None else str(text)).lower()
    out = []
    for ch in text:
        if ch in APOSTROPHES:
            continue
        out.append(" " if unicodedata.category(ch).startswith("P") else ch)
    return " ".join(w for w in "".join(out).split() if w not in ARTICLES)


def exact_match(prediction: Any, gold: Any) -> bool:
    g = normalize(gold)
    return bool(g) and normalize(prediction) == g


def contains(prediction: Any, gold: Any) -> bool:
    g = normalize(gold)
    return bool(g) and f" {g} " in f" {normalize(prediction)} "


def score(prediction: Any, gold: Any) -> dict[str, bool]:
    return {"exact_match": exact_match(prediction, gold), "contains": contains(prediction, gold)}


# ----------------------------------------------------------------------------------------------------
# Datasets


class DatasetNotFound(VidqaError):
    """No annotations (or no videos at all) under the data folder."""


@dataclass(frozen=True)
class Item:
    id: str
    video: str  # the video's name as the annotation gives it
    question: str
    answer: str
    category: int | str | None = None


@dataclass(frozen=True)
class Spec:
    title: str
    expected: str  # the layout, for the not-found message
    source: str  # where people get it
    category_names: dict[int, str] | None = None  # None: named after the questions' wh-word


ACTIVITYNET_TYPES = {0: "motion", 1: "spatial", 2: "temporal", 3: "yes/no", 4: "color", 5: "object",
                     6: "location", 7: "number", 8: "other"}  # MILVLG/activitynet-qa dataset/README.md

SPECS = {
    "msrvtt": Spec(
        "MSRVTT-QA",
        "expected {split}_qa.json (or {split}_q.json + {split}_a.json, or a CSV with video_name, question, answer, "
        "question_id) and the videos video7010.mp4 ... under it, videos/ or videos/all/",
        "get the QA from the MSRVTT-QA release (Xu et al. 2017, github.com/xudejing/video-question-answering) or "
        "the Video-LLaVA eval bundle (GPT_Zero_Shot_QA/MSRVTT_Zero_Shot_QA), the videos from MSR-VTT (Xu et al. 2016)"),
    "msvd": Spec(
        "MSVD-QA",
        "expected {split}_qa.json (+ youtube_mapping.txt when video_id is a number) or {split}_q.json + "
        "{split}_a.json, and the clips YouTubeClips/*.avi",
        "get the QA from the MSVD-QA release (Xu et al. 2017, github.com/xudejing/video-question-answering) or "
        "the Video-LLaVA eval bundle (GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA), the clips from the MSR Video Description "
        "Corpus (YouTubeClips.tar)"),
    "activitynet": Spec(
        "ActivityNet-QA",
        "expected {split}_q.json + {split}_a.json and the videos v_<video_name>.mp4|mkv|webm under it or videos/",
        "get the QA from github.com/MILVLG/activitynet-qa (Yu et al. 2019), the videos from ActivityNet v1.3",
        ACTIVITYNET_TYPES),
    "synthetic": Spec(
        "the synthetic set",
        "expected {split}_qa.json (MSRVTT-QA format) and its videos, videos/synthNNNNN.mp4",
        "make it with: python -m vidqa.synthetic DIR --videos 200 --seed 0"),
}

VIDEO_EXT_ORDER = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
PREFERRED_DIRS = ("", "videos/all", "videos", "video", "all", "youtubeclips", "testvideo", "test", "val")
ANNOTATION_DEPTH = 2
VIDEO_DEPTH = 4
WH_WORDS = ("what", "who", "how", "when", "where", "why", "which", "whose", "whom", "is", "are", "does", "do")


def _video_extensions() -> set[str]:
    from vidqa.library import VIDEO_EXTENSIONS

    return set(VIDEO_EXTENSIONS)


def _walk(root: Path, depth: int) -> Iterable[tuple[Path, list[str]]]:
    """(folder, file names) for root and its non-hidden subfolders, ``depth`` levels down, sorted."""
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        files, dirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    dirs.append(Path(e.path))
                elif e.is_file():
                    files.append(e.name)
            except OSError:
                continue
        yield folder, files
        if level < depth:
            stack.extend((d, level + 1) for d in reversed(dirs))


class VideoIndex:
    """Every video file under a folder, by stem; resolves annotation names through their variants."""

    def __init__(self, root: Path, mapping: dict[str, str] | None = None):
        self.root = root
        self.mapping = mapping or {}
        exts = _video_extensions()
        self.by_stem: dict[str, list[Path]] = {}
        for folder, names in _walk(root, VIDEO_DEPTH):
            for name in names:
                p = Path(name)
                if p.suffix.lower() in exts:
                    self.by_stem.setdefault(p.stem, []).append(folder / name)
        self.by_lower: dict[str, list[Path]] = {}
        for stem, paths in self.by_stem.items():
            self.by_lower.setdefault(stem.lower(), []).extend(paths)
        self._memo: dict[str, Path | None] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_stem.values())

    def _rank(self, path: Path) -> tuple:
        rel = path.parent.relative_to(self.root).as_posix().lower()
        rel = "" if rel == "." else rel
        where = PREFERRED_DIRS.index(rel) if rel in PREFERRED_DIRS else len(PREFERRED_DIRS) + rel.count("/")
        ext = path.suffix.lower()
        return (where, VIDEO_EXT_ORDER.index(ext) if ext in VIDEO_EXT_ORDER else len(VIDEO_EXT_ORDER), str(path))

    def variants(self, name: Any) -> list[str]:
        return name_variants(name, self.mapping)

    def find(self, name: Any) -> Path | None:
        key = str(name)
        if key not in self._memo:
            found = None
            for table, fold in ((self.by_stem, False), (self.by_lower, True)):
                for v in self.variants(name):
                    paths = table.get(v.lower() if fold else v)
                    if paths and (not fold or len({p.stem for p in paths}) == 1):  # case-folded: unambiguous only
                        found = min(paths, key=self._rank)
                        break
                if found:
                    break
            self._memo[key] = found
        return self._memo[key]


def name_variants(name: Any, mapping: dict[str, str] | None = None) -> list[str]:
    """The file stems an annotation's video name may have on disk, most likely first."""
    base = str(name).strip()
    suffix = Path(base).suffix.lower()
    if suffix and suffix in _video_extensions():
        base = base[: -len(suffix)]
    base = base.replace("\\", "/").rsplit("/", 1)[-1]
    out = [base]
    m = re.fullmatch(r"(?:video|vid)(\d+)", base)
    if base.isdigit():
        out += [f"video{base}", f"vid{base}"]
    elif m:
        out += [f"video{m[1]}", m[1], f"vid{m[1]}"]
    out += [base[2:]] if base.startswith("v_") else [f"v_{base}"]
    if mapping:
        out += [mapping[v] for v in list(out) if v in mapping]
    seen: dict[str, None] = {}
    for v in out:
        if v:
            seen.setdefault(v, None)
    return list(seen)


@dataclass
class Dataset:
    name: str
    title: str
    root: Path
    split: str
    format: str  # "qa.json", "q+a.json" or "csv"
    files: list[str]
    items: list[Item]
    videos: VideoIndex
    category_names: dict[Any, str] = field(default_factory=dict)

    def video_path(self, video: str) -> Path | None:
        return self.videos.find(video)

    def category_name(self, category: Any) -> str | None:
        if category is None:
            return None
        return self.category_names.get(category, f"category {category}")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise VidqaError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _records(data: Any, path: Path) -> list[dict]:
    if isinstance(data, dict):  # {id: record} maps appear in some re-releases
        data = [dict(v, **({} if "question_id" in v else {"question_id": k})) if isinstance(v, dict) else v
                for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise VidqaError(f"{path} is not a list of JSON objects")
    return data


def _first(record: dict, *keys: str) -> Any:
    for k in keys:
        if k in record and record[k] not in (None, ""):
            return record[k]
    return None


def _category(value: Any) -> int | str | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _unique_ids(items: list[Item]) -> list[Item]:
    seen: Counter = Counter()
    out = []
    for it in items:
        seen[it.id] += 1
        out.append(it if seen[it.id] == 1 else Item(f"{it.id}#{seen[it.id]}", it.video, it.question, it.answer,
                                                  it.category))
    return out


def _make_items(rows: list[dict], path: Path) -> list[Item]:
    items = []
    for n, r in enumerate(rows):
        video = _first(r, "video_name", "video_id", "video", "vid_id", "video_path")
        question, answer = _first(r, "question", "q", "Q"), _first(r, "answer", "a", "A")
        if video is None or question is None or answer is None:
            raise VidqaError(f"{path}: entry {n} lacks video/question/answer ({', '.join(sorted(r))})")
        qid = _first(r, "question_id", "id", "qid")
        items.append(Item(str(qid) if qid is not None else f"{video}#{n}", str(video), str(question).strip(),
                          str(answer).strip(), _category(_first(r, "category_id", "type", "category"))))
    return _unique_ids(items)


def _load_qa_json(path: Path) -> list[Item]:
    return _make_items(_records(_read_json(path), path), path)


def _load_q_a_json(q_path: Path, a_path: Path) -> list[Item]:
    questions = _records(_read_json(q_path), q_path)
    answers = _records(_read_json(a_path), a_path)
    by_id = {str(a["question_id"]): a for a in answers if a.get("question_id") is not None}
    rows = []
    for n, q in enumerate(questions):
        qid = q.get("question_id")
        a = by_id.get(str(qid)) if qid is not None else None
        if a is None:
            if qid is not None and by_id:
                raise VidqaError(f"{a_path} has no answer for question_id {qid} of {q_path}")
            if n >= len(answers):
                raise VidqaError(f"{a_path} has fewer answers ({len(answers)}) than {q_path} has questions")
            a = answers[n]  # no ids: the Video-LLaVA loader's join, by position
        row = {**{k: v for k, v in a.items() if k != "question_id"}, **q}
        rows.append(row)
    return _make_items(rows, q_path)


def _load_csv(path: Path) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise VidqaError(f"cannot read {path}: {e}")
    return _make_items(rows, path)


def _csv_header(path: Path) -> set[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return {h.strip().lower() for h in next(csv.reader(f), [])}
    except (OSError, csv.Error, UnicodeDecodeError):
        return set()


def _youtube_mapping(root: Path) -> dict[str, str]:
    """MSVD's ``youtube_mapping.txt`` (``<clip name> vid<N>`` per line), as vidN -> clip name."""
    for folder, names in _walk(root, ANNOTATION_DEPTH):
        if "youtube_mapping.txt" in names:
            mapping = {}
            for line in (folder / "youtube_mapping.txt").read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2:
                    mapping[parts[1]] = parts[0]
            return mapping
    return {}


def _summary_categories(annotation: Path, split: str) -> dict[Any, str]:
    """Category names a generator wrote beside its annotations (``vidqa.synthetic``): ``SPLIT_summary.json``
    with ``"category_names": {"N": name}`` or ``"categories": {name: {"id": N, ...}}``."""
    path = annotation.parent / f"{split}_summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    names: dict[Any, str] = {}
    if not isinstance(summary, dict):
        return names
    for source in (summary.get("categories"), summary.get("category_names")):
        if isinstance(source, dict):
            for k, v in source.items():
                if isinstance(v, dict) and "id" in v:
                    names[_category(v["id"])] = str(k)
                elif isinstance(v, str):
                    names[_category(k)] = v
    return names


def _category_names(name: str, items: list[Item], annotation: Path, split: str) -> dict[Any, str]:
    spec = SPECS[name]
    cats = {it.category for it in items if it.category is not None}
    if not cats:
        return {}
    known = spec.category_names or _summary_categories(annotation, split)
    if known:
        return {c: known.get(c, str(c) if isinstance(c, str) else f"category {c}") for c in cats}
    # MSRVTT-QA / MSVD-QA: each category is one question word; name each after its questions' first word
    # when that is a wh-word, a clear majority, and different for every category; else "category N"
    words: dict[Any, Counter] = {}
    for it in items:
        if it.category is not None:
            first = normalize(it.question).split()[:1]
            words.setdefault(it.category, Counter())[first[0] if first else ""] += 1
    names: dict[Any, str] = {}
    for c in cats:
        if isinstance(c, str):
            names[c] = c
            continue
        word, count = min(words[c].items(), key=lambda kv: (-kv[1], kv[0]))
        names[c] = word if word in WH_WORDS and count > 0.5 * sum(words[c].values()) else ""
    labels = [v for c, v in names.items() if not isinstance(c, str)]
    if "" in labels or len(set(labels)) != len(labels):
        names = {c: (c if isinstance(c, str) else f"category {c}") for c in cats}
    return names


def find_annotations(root: Path, split: str) -> tuple[str, list[Path]] | None:
    """The annotation files of a split under root: ``(format, files)``, or None."""
    found: dict[str, list[tuple[int, Path]]] = {"qa.json": [], "q+a.json": [], "csv": []}
    split_word = re.compile(rf"(^|[^a-z0-9]){split}([^a-z0-9]|$)")
    for folder, names in _walk(root, ANNOTATION_DEPTH):
        depth = len(folder.relative_to(root).parts)
        lower = {n.lower(): n for n in names}
        if f"{split}_qa.json" in lower:
            found["qa.json"].append((depth, folder / lower[f"{split}_qa.json"]))
        if f"{split}_q.json" in lower and f"{split}_a.json" in lower:
            found["q+a.json"].append((depth, folder / lower[f"{split}_q.json"]))
        for low, n in lower.items():
            if low.endswith(".csv") and split_word.search(low[:-4]):
                header = _csv_header(folder / n)
                if {"question", "answer"} <= header and header & {"video_name", "video_id", "video"}:
                    found["csv"].append((depth, folder / n))
    for fmt in ("qa.json", "q+a.json", "csv"):
        if found[fmt]:
            depth, path = min(found[fmt], key=lambda dp: (dp[0], str(dp[1])))
            if fmt == "q+a.json":
                lower = {p.name.lower(): p for p in path.parent.iterdir()}
                return fmt, [path, lower[f"{split}_a.json"]]
            return fmt, [path]
    return None


def not_found(name: str, root: Path, split: str, what: str | None = None) -> DatasetNotFound:
    spec = SPECS[name]
    head = f"{spec.title} not found under {root}" + (f" ({what})" if what else "")
    return DatasetNotFound(f"{head}: {spec.expected.format(split=split)}; {spec.source}")


def load_dataset(name: str, root: str | os.PathLike, split: str = "test") -> Dataset:
    """Read a dataset's annotations (format detected) and index its videos; DatasetNotFound if absent."""
    if name not in SPECS:
        raise VidqaError(f"unknown dataset {name!r} (use {', '.join(DATASETS)})", exit_code=2)
    if split not in SPLITS:
        raise VidqaError(f"unknown split {split!r} (use {' or '.join(SPLITS)})", exit_code=2)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise not_found(name, root, split, "no such folder")
    root = root.resolve()
    hit = find_annotations(root, split)
    if hit is None:
        raise not_found(name, root, split, f"no {split} annotations")
    fmt, files = hit
    if fmt == "qa.json":
        items = _load_qa_json(files[0])
    elif fmt == "q+a.json":
        items = _load_q_a_json(files[0], files[1])
    else:
        items = _load_csv(files[0])
    if not items:
        raise VidqaError(f"{files[0]} holds no questions")
    videos = VideoIndex(root, _youtube_mapping(root))
    ds = Dataset(name, SPECS[name].title, root, split, fmt, [str(f) for f in files], items, videos,
                 _category_names(name, items, files[0], split))
    if len(videos) == 0 or not any(ds.video_path(v) for v in dict.fromkeys(it.video for it in items)):
        raise not_found(name, root, split, f"annotations at {files[0]}, but none of their videos")
    return ds


# ----------------------------------------------------------------------------------------------------
# Selection and sharding


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise VidqaError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), not {text!r}", exit_code=2)
    return int(m[1]), int(m[2])


def shard_of(video: str, n: int) -> int:
    """The shard of a video: stable (a hash of its name), so its questions stay together."""
    return int.from_bytes(hashlib.sha256(str(video).encode()).digest()[:8], "big") % n


def select(items: list[Item], limit: int | None = None, shard: tuple[int, int] | None = None) -> list[Item]:
    """The first ``limit`` questions, then the ones whose video falls in ``shard``."""
    chosen = items[:limit] if limit else list(items)
    if shard:
        i, n = shard
        chosen = [it for it in chosen if shard_of(it.video, n) == i]
    return chosen


def group_by_video(items: list[Item]) -> list[tuple[str, list[Item]]]:
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.video, []).append(it)
    return list(groups.items())


def render_prompt(template: str, question: str) -> str:
    return template.replace("{question}", question)


def check_prompt(template: str | None) -> str:
    if template is None:
        return DEFAULT_PROMPT
    template = template.replace("\\n", "\n")
    if "{question}" not in template:
        raise VidqaError("--prompt must contain {question}, e.g. '{question} Answer in one word.'", exit_code=2)
    return template


# ----------------------------------------------------------------------------------------------------
# Prediction files


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


def _write_json_atomic(path: Path, value: Any) -> None:
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
    _write_json_atomic(path, settings)


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


# ----------------------------------------------------------------------------------------------------
# Answering


@dataclass
class RunSummary:
    answered: int = 0
    skipped: int = 0  # already in the prediction file
    errors: int = 0
    missing_videos: list[str] = field(default_factory=list)
    failed_videos: list[tuple[str, str]] = field(default_factory=list)
    compressed: int = 0
    from_store: int = 0
    torn_line_repaired: bool = False
    seconds: float = 0.0


def peak_gpu_memory(device) -> int | None:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    return None


def todo_count(dataset: Dataset, items: list[Item], done: set[str]) -> int:
    return sum(1 for it in items if it.id not in done and dataset.video_path(it.video) is not None)


def done_ids(path: Path) -> set[str]:
    return {str(r["id"]) for r in read_records(path) if r.get("prediction") is not None}


def answer_all(qa, dataset: Dataset, items: list[Item], out_file: Path, *, sampling, prompt: str,
               max_new_tokens: int, store=None, decoder: str = "auto", batch_size: int | None = None,
               shard_label: str | None = None, on_question: Callable[[Item], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> RunSummary:
    """Answer every question of ``items`` not yet in ``out_file``, video by video, one compression each."""
    from vidqa import library
    from vidqa.generate import DecodeStats, GenerationConfig
    from vidqa.pipeline import Timings

    summary = RunSummary()
    t_start = time.perf_counter()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    noted_thin = False
    with PredictionWriter(out_file) as writer:
        summary.torn_line_repaired = writer.torn
        done = done_ids(out_file)
        for video, group in group_by_video(items):
            todo = [it for it in group if it.id not in done]
            summary.skipped += len(group) - len(todo)
            path = dataset.video_path(video)
            if path is None:
                summary.missing_videos.append(video)
                continue
            if not todo:
                continue
            timings = Timings()
            t0 = time.perf_counter()
            try:
                cache, _, hit = library.load_or_compress(qa, path, sampling, store=store, decoder=decoder,
                                                         batch_size=batch_size, timings=timings)
            except VidqaError as e:
                summary.failed_videos.append((video, str(e)))
                for it in todo:
                    writer.write(_record(it, path, None, error=f"video: {e}", shard=shard_label))
                    summary.errors += 1
                    if on_question:
                        on_question(it)
                continue
            summary.from_store += bool(hit)
            summary.compressed += not hit
            video_cache = {"from_store": bool(hit), "frames": cache.num_frames,
                           "load_s": round(time.perf_counter() - t0, 4), "vision_s": round(timings.vision_s, 4),
                           "compress_s": round(timings.compress_s, 4)}
            for it in todo:
                text = render_prompt(prompt, it.question)
                try:
                    budget = qa.max_frames(text, max_new_tokens)
                except ContextError as e:
                    writer.write(_record(it, path, None, error=f"context: {e}", shard=shard_label))
                    summary.errors += 1
                    if on_question:
                        on_question(it)
                    continue
                used = library.thin(cache, budget)
                if used.num_frames < cache.num_frames and not noted_thin and on_note:
                    on_note(f"{cache.num_frames} frames do not fit the context with the question; "
                            f"using {used.num_frames}, sampled uniformly (noted once)")
                    noted_thin = True
                stats = DecodeStats()
                prediction = "".join(qa.answer(used, text, gen, stats)).strip()
                timing = {
                    "frames": used.num_frames,
                    "tokens_per_frame": used.tokens_per_frame,
                    "kv_bytes_per_frame": used.bytes_per_frame,
                    "ttft_ms": round(1000 * stats.prefill_s, 3),
                    "ms_per_token": round(stats.ms_per_token, 3) if stats.decode_steps else None,
                    "decode_ms": round(1000 * stats.decode_s, 3),
                    "decode_steps": stats.decode_steps,
                    "answer_tokens": stats.tokens,
                    "peak_gpu_mem_bytes": peak_gpu_memory(qa.device),
                }
                rec = _record(it, path, prediction, timing=timing, shard=shard_label)
                if video_cache is not None:
                    rec["video_cache"] = video_cache  # on the first question answered from this compression
                    video_cache = None
                writer.write(rec)
                done.add(it.id)
                summary.answered += 1
                if on_question:
                    on_question(it)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _record(it: Item, path: Path | None, prediction: str | None, *, timing: dict | None = None,
            error: str | None = None, shard: str | None = None) -> dict:
    rec: dict[str, Any] = {"id": it.id, "video": it.video, "question": it.question, "answer": it.answer,
                           "category": it.category, "prediction": prediction}
    if prediction is not None:
        rec["metrics"] = score(prediction, it.answer)
        rec["timings"] = timing or {}
    if error is not None:
        rec["error"] = error
    rec["video_path"] = str(path) if path else None
    if shard:
        rec["shard"] = shard
    return rec


# ----------------------------------------------------------------------------------------------------
# Judge: the Video-ChatGPT protocol over an OpenAI-compatible endpoint

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
                 timeout: float = 60.0, attempts: int = 4, sleep: Callable[[float], None] = time.sleep):
        self.model = model
        self.url = (url or DEFAULT_JUDGE_URL).rstrip("/")
        self.endpoint = self.url if self.url.endswith("/chat/completions") else self.url + "/chat/completions"
        self.key = key if key is not None else (os.environ.get("VIDQA_JUDGE_KEY") or os.environ.get("OPENAI_API_KEY"))
        host = urllib.parse.urlsplit(self.endpoint).hostname or ""
        if urllib.parse.urlsplit(self.endpoint).scheme not in ("http", "https") or not host:
            raise JudgeError(f"--judge-url must be an http(s) URL, not {url!r}", exit_code=2)
        if not self.key and host == "api.openai.com":
            raise JudgeError("the judge needs an API key: set OPENAI_API_KEY or VIDQA_JUDGE_KEY")
        local = host in ("127.0.0.1", "localhost", "::1")
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}) if local
                                                  else urllib.request.ProxyHandler())
        self.cache_dir = Path(cache_dir)
        self.timeout, self.attempts, self.sleep = timeout, attempts, sleep
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
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(min(30.0, 2.0 ** (attempt - 1)))
            try:
                raw = self._post(body)
            except _Retry as e:
                problem = str(e)
                continue
            verdict = parse_judgement(raw)
            if verdict is None:
                problem = f"unparseable reply {raw[:80]!r}"
                continue
            value = {**verdict, "raw": raw, "model": self.model}
            path = self._cache_path(self.cache_key(question, answer, prediction))
            _write_json_atomic(path, value)
            return {**value, "cached": False}
        if problem.startswith("unparseable"):
            return {"error": problem}
        raise JudgeError(f"the judge at {self.endpoint} did not answer after {self.attempts} tries: {problem}")

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
                raise _Retry(f"HTTP {e.code}")
            raise JudgeError(f"the judge at {self.endpoint} refused: HTTP {e.code} {detail[:160]}; "
                             "check --judge-url, --judge-model and the key (OPENAI_API_KEY or VIDQA_JUDGE_KEY)")
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
        except ValueError:
            raise _Retry("the reply is not JSON")
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise _Retry(f"no choices[0].message.content in the reply: {str(data)[:80]}")


class _Retry(Exception):
    pass


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


# ----------------------------------------------------------------------------------------------------
# Report


def collect_records(out: Path) -> tuple[dict[str, dict], list[str]]:
    """Every prediction file in ``out``, merged by id: a record with a prediction beats an error record;
    among several, the first file (sorted) wins."""
    files = sorted(out.glob("predictions*.jsonl"))
    merged: dict[str, dict] = {}
    for f in files:
        for r in read_records(f):
            rid = str(r["id"])
            old = merged.get(rid)
            if old is None or (old.get("prediction") is None and r.get("prediction") is not None):
                merged[rid] = r
    return merged, [str(f) for f in files]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 3)


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 6) if d else None


def build_report(dataset: Dataset, selection: list[Item], records: dict[str, dict], settings: dict, *,
                 judge: Judge | None = None, verdicts: dict[str, dict] | None = None,
                 files: list[str] | None = None, out: Path | None = None) -> dict:
    """Metrics over the selection's answered questions, counts of the rest, efficiency, judge."""
    answered, errors, pending = [], [], 0
    missing = [v for v, _ in group_by_video(selection) if dataset.video_path(v) is None]
    missing_set = set(missing)
    for it in selection:
        r = records.get(it.id)
        if it.video in missing_set:
            continue
        if r is None:
            pending += 1
        elif r.get("prediction") is None:
            errors.append(r)
        else:
            answered.append((it, r))
    n = len(answered)
    em = [score(r["prediction"], it.answer) for it, r in answered]  # recomputed: the rule is the code's, now
    metrics = {"answered": n, "exact_match": _rate(sum(m["exact_match"] for m in em), n),
               "contains": _rate(sum(m["contains"] for m in em), n)}
    per_cat: dict[str, dict] = {}
    cat_rows: dict[Any, list[int]] = {}
    for k, (it, _) in enumerate(answered):
        if it.category is not None:
            cat_rows.setdefault(it.category, []).append(k)
    for cat in sorted(cat_rows, key=lambda c: (isinstance(c, str), c if isinstance(c, int) else str(c))):
        rows = cat_rows[cat]
        entry = {"category_id": cat, "answered": len(rows),
                 "exact_match": _rate(sum(em[k]["exact_match"] for k in rows), len(rows)),
                 "contains": _rate(sum(em[k]["contains"] for k in rows), len(rows))}
        if verdicts is not None:
            vs = [verdicts.get(answered[k][1]["id"], {}) for k in rows]
            yes, no = sum(v.get("pred") == "yes" for v in vs), sum(v.get("pred") == "no" for v in vs)
            entry["judge_accuracy"] = _rate(yes, yes + no)
            entry["judge_score"] = _mean([int(v["score"]) for v in vs if "score" in v])
        per_cat[dataset.category_name(cat)] = entry

    judge_block = None
    if judge is not None and verdicts is not None:
        vs = [verdicts.get(r["id"], {"error": "not judged"}) for _, r in answered]
        yes, no = sum(v.get("pred") == "yes" for v in vs), sum(v.get("pred") == "no" for v in vs)
        judge_block = {
            "model": judge.model, "url": judge.url, "protocol": JUDGE_PROTOCOL, "temperature": 0,
            "accuracy": _rate(yes, yes + no),
            "score": round(sum(int(v["score"]) for v in vs if "score" in v) / max(1, yes + no), 4) if yes + no else None,
            "yes": yes, "no": no, "failed": sum("error" in v for v in vs),
            "requests": judge.requests, "cache_hits": judge.cache_hits,
        }

    timings = [r.get("timings") or {} for _, r in answered]
    caches = [r["video_cache"] for _, r in answered if isinstance(r.get("video_cache"), dict)]
    computed = [c for c in caches if not c.get("from_store")]
    comp_frames = sum(c.get("frames", 0) for c in computed)
    comp_s = sum(c.get("vision_s", 0.0) + c.get("compress_s", 0.0) for c in computed)
    load_s = sum(c.get("load_s", 0.0) for c in computed)
    decode_ms = sum(t.get("decode_ms") or 0.0 for t in timings)
    decode_steps = sum(t.get("decode_steps") or 0 for t in timings)
    peaks = [t["peak_gpu_mem_bytes"] for t in timings if t.get("peak_gpu_mem_bytes") is not None]
    kv = [t["kv_bytes_per_frame"] for t in timings if t.get("kv_bytes_per_frame") is not None]
    efficiency = {
        "tokens_per_frame": settings.get("tokens_per_frame"),
        "kv_bytes_per_frame": kv[0] if kv and len(set(kv)) == 1 else _mean(kv),
        "frames_per_question": _mean([t.get("frames", 0) for t in timings]),
        "videos_compressed": len(computed),
        "videos_from_store": len(caches) - len(computed),
        "compress_frames_per_s": round(comp_frames / comp_s, 2) if comp_s > 0 else None,  # vision tower + method
        "decode_and_compress_frames_per_s": round(comp_frames / load_s, 2) if load_s > 0 else None,  # + video decoding
        "ttft_ms_mean": _mean([t["ttft_ms"] for t in timings if t.get("ttft_ms") is not None]),
        "ttft_ms_p50": _pct([t["ttft_ms"] for t in timings if t.get("ttft_ms") is not None], 0.5),
        "ttft_ms_p90": _pct([t["ttft_ms"] for t in timings if t.get("ttft_ms") is not None], 0.9),
        "ms_per_token": round(decode_ms / decode_steps, 3) if decode_steps else None,
        "answer_tokens_mean": _mean([t.get("answer_tokens", 0) for t in timings]),
        "peak_gpu_mem_bytes": max(peaks) if peaks else None,
    }
    videos = group_by_video(selection)
    report = {
        "dataset": dataset.name, "title": dataset.title, "split": dataset.split, "data": str(dataset.root),
        "format": dataset.format, "annotations": dataset.files,
        "model": settings.get("model"), "method": settings.get("method"), "dtype": settings.get("dtype"),
        "device": settings.get("device"), "prompt": settings.get("prompt"),
        "max_new_tokens": settings.get("max_new_tokens"), "sampling": settings.get("sampling"),
        "questions": {"selected": len(selection), "answered": n, "errors": len(errors), "pending": pending,
                      "missing_video": sum(1 for it in selection if it.video in missing_set)},
        "videos": {"selected": len(videos), "missing": len(missing), "missing_names": missing[:20],
                   "failed": sorted({r["video"] for r in errors if str(r.get("error", "")).startswith("video:")})[:20]},
        "metrics": metrics,
        "per_category": per_cat,
        "judge": judge_block,
        "efficiency": efficiency,
        "metric_rule": "normalize: NFKC, lowercase, delete apostrophes, other Unicode punctuation -> space, drop "
                       "a/an/the, collapse whitespace; exact_match: equal after normalize; contains: normalized "
                       "gold is a whole-word substring of the normalized prediction",
        "predictions": files or [],
        "out": str(out) if out else None,
    }
    return report


def write_judgements(out: Path, judge: Judge, records: list[dict], verdicts: dict[str, dict]) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge.model)
    path = out / f"judge.{safe}.jsonl"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            v = verdicts.get(r["id"])
            if v is not None:
                f.write(json.dumps({"id": r["id"], "judge_model": judge.model, **v}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def report_for(dataset: Dataset, selection: list[Item], out: Path, *, records: dict[str, dict] | None = None,
               files: list[str] | None = None, judge: Judge | None = None, judge_workers: int = 8,
               on_judged: Callable[[], None] | None = None, write: bool = True) -> dict:
    """Collect the prediction files of ``out`` (or the given records), judge if asked, build the report."""
    if records is None:
        records, files = collect_records(out)
    settings = read_settings(out)
    verdicts = None
    if judge is not None:
        wanted = {it.id for it in selection}
        answered = [r for rid, r in records.items() if rid in wanted and r.get("prediction") is not None]
        verdicts = judge_records(judge, answered, judge_workers, on_judged)
        write_judgements(out, judge, answered, verdicts)
    report = build_report(dataset, selection, records, settings, judge=judge, verdicts=verdicts, files=files,
                          out=out)
    if write:
        _write_json_atomic(out / "report.json", report)
    return report


# ----------------------------------------------------------------------------------------------------
# Shards and ranks


def marker_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / f"predictions.part-{shard[0]}-of-{shard[1]}.done"


def write_marker(out: Path, shard: tuple[int, int], summary: RunSummary) -> None:
    _write_json_atomic(marker_path(out, shard), {
        "shard": list(shard), "run_id": os.environ.get("TORCHELASTIC_RUN_ID"), "finished": time.time(),
        "answered": summary.answered, "errors": summary.errors, "missing_videos": len(summary.missing_videos),
    })


def wait_for_shards(out: Path, world: int, run_id: str | None, *, poll_s: float = 2.0,
                    on_wait: Callable[[list[int]], None] | None = None) -> None:
    """Block until every rank's done marker of this torchrun (same run id) is there."""
    told = False
    while True:
        waiting = []
        for r in range(world):
            try:
                m = json.loads(marker_path(out, (r, world)).read_text())
            except (OSError, ValueError):
                m = None
            if not m or m.get("run_id") != run_id:
                waiting.append(r)
        if not waiting:
            return
        if on_wait and not told:
            on_wait(waiting)
            told = True
        time.sleep(poll_s)


def default_out(dataset: str, split: str, model: str | None) -> Path:
    if not model:
        raise VidqaError("pass --out DIR (the run's folder) or --model", exit_code=2)
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(model).rstrip("/")).name) or "model"
    return Path("vidqa-bench") / f"{dataset}-{split}-{tag}"


def run_settings(qa, dataset: Dataset, *, prompt: str, max_new_tokens: int, sampling) -> dict:
    import vidqa

    return {"dataset": dataset.name, "split": dataset.split, "data": str(dataset.root), "format": dataset.format,
            "model": qa.model_id, "model_fingerprint": qa.model_fingerprint, "method": qa.method.name,
            "tokens_per_frame": qa.method.tokens_per_frame, "dtype": str(qa.vision.dtype).replace("torch.", ""),
            "device": str(qa.device), "prompt": prompt, "max_new_tokens": max_new_tokens,
            "sampling": asdict(sampling), "vidqa_version": vidqa.__version__}


# ----------------------------------------------------------------------------------------------------
# Rendering


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def render_table(report: dict):
    """The closing view: a title line, a rich table of accuracy (all, per category, judge), then
    efficiency and counts, one line each."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    q = report["questions"]
    title = Text.assemble((f"vidqa bench {report['dataset']} ({report['split']})", "bold"),
                          f": {q['answered']} of {q['selected']} questions answered, "
                          f"{report.get('method') or '?'} / {Path(str(report.get('model') or '?')).name}")
    table = Table()
    table.add_column("")
    table.add_column("n", justify="right")
    table.add_column("exact match", justify="right")
    table.add_column("contains", justify="right")
    judged = report.get("judge") is not None
    if judged:
        table.add_column("judge acc", justify="right")
        table.add_column("judge score", justify="right")
    m = report["metrics"]
    row = ["all", str(m["answered"]), _fmt_pct(m["exact_match"]), _fmt_pct(m["contains"])]
    if judged:
        j = report["judge"]
        row += [_fmt_pct(j["accuracy"]), "-" if j["score"] is None else f"{j['score']:.2f}"]
    table.add_row(*row, style="bold")
    for name, c in report["per_category"].items():
        row = [f"  {name}", str(c["answered"]), _fmt_pct(c["exact_match"]), _fmt_pct(c["contains"])]
        if judged:
            row += [_fmt_pct(c.get("judge_accuracy")),
                    "-" if c.get("judge_score") is None else f"{c['judge_score']:.2f}"]
        table.add_row(*row)
    e = report["efficiency"]
    peak = e["peak_gpu_mem_bytes"]
    lines = [
        f"{e['tokens_per_frame']} tokens/frame, {e['kv_bytes_per_frame'] or 0:,.0f} KV bytes/frame, "
        f"{e['frames_per_question'] or 0:.1f} frames/question",
        ("compression " + ("n/a" if e["compress_frames_per_s"] is None else f"{e['compress_frames_per_s']:.1f} frames/s")
         + f" ({e['videos_compressed']} videos compressed, {e['videos_from_store']} from the store)"),
        f"first token {e['ttft_ms_mean'] or 0:.1f} ms mean, {e['ttft_ms_p50'] or 0:.1f} p50; "
        f"{e['ms_per_token'] or 0:.2f} ms/token; peak GPU memory "
        + ("n/a (CPU)" if peak is None else f"{peak / 2**30:.2f} GiB"),
        f"{q['pending']} pending, {q['errors']} errors, {q['missing_video']} questions on "
        f"{report['videos']['missing']} missing videos",
    ]
    if judged:
        j = report["judge"]
        lines.append(f"judge {j['model']} ({j['protocol']} protocol): {j['yes']} yes, {j['no']} no, "
                     f"{j['failed']} unparsed; {j['requests']} requests, {j['cache_hits']} from the cache")
    return Group(title, table, *(Text(line, style="dim") for line in lines))
